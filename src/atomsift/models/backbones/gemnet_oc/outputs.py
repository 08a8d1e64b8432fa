"""GemNet-OC atom update block and output block (per-block energy atom features and direct-force edge
features), with fairchem-core 1.10's submodule names (``out_blocks.0.seq_energy_pre.0.linear.weight``, ...)."""

from __future__ import annotations

from torch import Tensor, nn

from atomsift.models.backbones.gemnet_oc.layers import INV_SQRT_2, Dense, ResidualLayer, fused_dense
from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor

__all__ = ["AtomUpdateBlock", "OutputBlock", "scatter_sum"]


def scatter_sum(values: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum rows of ``values`` (n, ...) into ``size`` rows by ``index`` (n,) -> (size, ...)."""
    out = values.new_zeros((size, *values.shape[1:]))
    return out.index_add_(0, index, values)


class AtomUpdateBlock(nn.Module):
    """Sum the edge embeddings (times a radial projection) into their target atoms, then an MLP.

    Args:
        emb_size_atom: atom embedding size.
        emb_size_edge: edge embedding size.
        emb_size_rbf: size of the radial basis projection.
        nHidden: number of residual layers.
        activation: activation of the dense layers.
    """

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_rbf: int,
        nHidden: int,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.dense_rbf = Dense(emb_size_rbf, emb_size_edge, activation=None, bias=False)
        self.scale_sum = ScaleFactor()
        self.layers = self.get_mlp(emb_size_edge, emb_size_atom, nHidden, activation)

    @staticmethod
    def get_mlp(units_in: int, units: int, nHidden: int, activation: str | None) -> nn.ModuleList:
        """A Dense layer units_in -> units (only when the sizes differ), then nHidden residual layers."""
        mlp: list[nn.Module] = []
        if units_in != units:
            mlp.append(Dense(units_in, units, activation=activation, bias=False))
        mlp += [ResidualLayer(units, nLayers=2, activation=activation) for _ in range(nHidden)]
        return nn.ModuleList(mlp)

    def forward(self, h: Tensor, m: Tensor, basis_rad: Tensor, idx_atom: Tensor) -> Tensor:
        """h (N, atom), m (E, edge), basis_rad (E, emb_size_rbf), idx_atom (E,) target atoms -> (N, atom)."""
        x = m * self.dense_rbf(basis_rad)
        x = self.scale_sum(scatter_sum(x, idx_atom, h.shape[0]), ref=m)
        for layer in self.layers:
            x = layer(x)
        return x


class OutputBlock(AtomUpdateBlock):
    """Per-block output: atom features for the energy and (direct forces) edge features for the forces.

    Args:
        emb_size_atom, emb_size_edge, emb_size_rbf: embedding sizes.
        nHidden: residual layers before adding the atom embedding.
        nHidden_afteratom: residual layers after adding it (0: no skip from the atom embedding).
        activation: activation of the dense layers.
        direct_forces: also produce edge features (seq_forces, dense_rbf_F, scale_rbf_F).
    """

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_rbf: int,
        nHidden: int,
        nHidden_afteratom: int,
        activation: str | None = None,
        direct_forces: bool = True,
    ) -> None:
        super().__init__(emb_size_atom, emb_size_edge, emb_size_rbf, nHidden, activation=activation)
        self.direct_forces = direct_forces
        self.seq_energy_pre = self.layers  # the same modules under a second name, as in fairchem
        self.seq_energy2 = None
        if nHidden_afteratom >= 1:
            self.seq_energy2 = self.get_mlp(emb_size_atom, emb_size_atom, nHidden_afteratom, activation)
        if direct_forces:
            self.scale_rbf_F = ScaleFactor()
            self.seq_forces = self.get_mlp(emb_size_edge, emb_size_edge, nHidden, activation)
            self.dense_rbf_F = Dense(emb_size_rbf, emb_size_edge, activation=None, bias=False)

    def forward(self, h: Tensor, m: Tensor, basis_rad: Tensor, idx_atom: Tensor) -> tuple[Tensor, Tensor | None]:
        """Returns (N, emb_size_atom) atom features and (E, emb_size_edge) edge features (None without
        direct forces)."""
        if self.direct_forces:
            rbf_E, rbf_F = fused_dense(basis_rad, [self.dense_rbf, self.dense_rbf_F])
        else:
            rbf_E, rbf_F = self.dense_rbf(basis_rad), None
        x = m * rbf_E
        x_E = self.scale_sum(scatter_sum(x, idx_atom, h.shape[0]), ref=m)
        for layer in self.seq_energy_pre:
            x_E = layer(x_E)
        if self.seq_energy2 is not None:
            x_E = (x_E + h).mul_(INV_SQRT_2)
            for layer in self.seq_energy2:
                x_E = layer(x_E)
        if not self.direct_forces:
            return x_E, None
        x_F = m
        for layer in self.seq_forces:
            x_F = layer(x_F)
        x_F = self.scale_rbf_F(x_F * rbf_F, ref=x_F)
        return x_E, x_F
