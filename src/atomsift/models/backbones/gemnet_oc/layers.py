"""Basic GemNet-OC layers: activations, dense/residual layers, embeddings, efficient bilinear.

Module and parameter names follow fairchem-core 1.10 (``Dense.linear``, ``ResidualLayer.dense_mlp``,
``AtomEmbedding.embeddings``, ``BasisEmbedding.weight``, ``EfficientInteractionBilinear.bilinear``) so
that fairchem state_dicts load by key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from atomsift.errors import ConfigError, DataError

__all__ = [
    "AtomEmbedding",
    "BasisEmbedding",
    "Dense",
    "EdgeEmbedding",
    "EfficientInteractionBilinear",
    "ResidualLayer",
    "ScaledSiLU",
    "SiQU",
    "fused_dense",
    "get_initializer",
    "he_orthogonal_init",
]


INV_SQRT_2 = 1.0 / math.sqrt(2.0)  # the scaling of every residual sum


# --------------------------------------------------------------------------- initialisers


def _zero_mean_unit_var(w: Tensor) -> Tensor:
    """Standardise each output row (over all fan-in axes) to mean 0, unbiased variance 1."""
    dims = [0, 1] if w.dim() == 3 else 1
    var, mean = torch.var_mean(w, dim=dims, unbiased=True, keepdim=True)
    return (w - mean) / torch.sqrt(var + 1e-6)


def he_orthogonal_init(tensor: Tensor) -> Tensor:
    """Fill ``tensor`` in place with a random semi-orthogonal matrix rescaled to He variance.

    The orthogonal draw decorrelates the outputs; each row is then standardised and multiplied by
    ``1/sqrt(fan_in)``, where fan_in is the size of all axes but the last for 3-d tensors and
    ``shape[1]`` for matrices.
    """
    nn.init.orthogonal_(tensor)
    fan_in = math.prod(tensor.shape[:-1]) if tensor.dim() == 3 else tensor.shape[1]
    with torch.no_grad():
        tensor.copy_(_zero_mean_unit_var(tensor) / math.sqrt(fan_in))
    return tensor


def _grid_init(tensor: Tensor, start: float = -1.0, end: float = 1.0) -> Tensor:
    with torch.no_grad():
        grid = torch.linspace(start, end, tensor.shape[1], dtype=tensor.dtype, device=tensor.device)
        tensor.copy_(grid.expand_as(tensor))
    return tensor


def _log_grid_init(tensor: Tensor, start: float = -4.0, end: float = 0.0) -> Tensor:
    with torch.no_grad():
        grid = torch.logspace(start, end, tensor.shape[1], dtype=tensor.dtype, device=tensor.device)
        tensor.copy_(grid.expand_as(tensor))
    return tensor


def get_initializer(name: str, **kwargs) -> Callable[[Tensor], Tensor]:
    """Initialiser by fairchem name: "HeOrthogonal", "zeros", "grid" or "loggrid" (case-insensitive)."""
    table: dict[str, Callable[..., Tensor]] = {
        "heorthogonal": he_orthogonal_init,
        "zeros": nn.init.zeros_,
        "grid": _grid_init,
        "loggrid": _log_grid_init,
    }
    key = name.lower()
    if key not in table:
        raise ConfigError(
            f"unknown initializer {name!r}",
            fix="use one of HeOrthogonal, zeros, grid, loggrid",
        )
    return partial(table[key], **kwargs)


# --------------------------------------------------------------------------- activations


class ScaledSiLU(nn.Module):
    """SiLU divided by 0.6, so that its output has roughly unit variance for unit-normal input."""

    def __init__(self) -> None:
        super().__init__()
        self.scale_factor = 1.0 / 0.6
        self._activation = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        # in place on SiLU's fresh output (its backward reads the input, not the output): one tensor less
        return self._activation(x).mul_(self.scale_factor)


class SiQU(nn.Module):
    """x * SiLU(x) (used by the original GemNet; GemNet-OC uses ScaledSiLU)."""

    def __init__(self) -> None:
        super().__init__()
        self._activation = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return x * self._activation(x)


def _make_activation(activation: str | None) -> nn.Module:
    name = activation.lower() if isinstance(activation, str) else activation
    if name is None:
        return nn.Identity()
    if name in ("silu", "swish"):
        return ScaledSiLU()
    if name == "siqu":
        return SiQU()
    raise ConfigError(
        f"activation {activation!r} is not available for GemNet-OC",
        fix="use 'silu' (scaled SiLU), 'swish', 'siqu' or None",
    )


# --------------------------------------------------------------------------- dense layers


class Dense(nn.Module):
    """Linear layer (He-orthogonal init, zero bias) followed by an optional activation.

    Args:
        in_features: input size.
        out_features: output size.
        bias: add a bias (default False, as in GemNet-OC).
        activation: "silu"/"swish" (scaled SiLU), "siqu" or None.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.reset_parameters()
        self._activation = _make_activation(activation)

    def reset_parameters(self, initializer: Callable[[Tensor], Tensor] = he_orthogonal_init) -> None:
        initializer(self.linear.weight)
        if self.linear.bias is not None:
            with torch.no_grad():
                self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_features) -> (..., out_features)."""
        return self._activation(self.linear(x))


def fused_dense(x: Tensor, layers: list[Dense]) -> list[Tensor]:
    """``[layer(x) for layer in layers]`` as one matrix product when the layers are bias-free and share an
    activation class (then the outputs are column views of one (..., sum of out_features) tensor).

    One wide product instead of several narrow ones, forwards and backwards (one input gradient product
    instead of one per layer plus their sum); the values agree with the separate layers to float rounding.
    """
    first = layers[0]
    if len(layers) == 1 or any(
        layer.linear.bias is not None or type(layer._activation) is not type(first._activation) for layer in layers
    ):
        return [layer(x) for layer in layers]
    weight = torch.cat([layer.linear.weight for layer in layers], dim=0)
    y = first._activation(nn.functional.linear(x, weight))
    return list(y.split([layer.linear.out_features for layer in layers], dim=-1))


class ResidualLayer(nn.Module):
    """``(x + mlp(x)) / sqrt(2)`` with ``nLayers`` bias-free layers of width ``units``.

    Args:
        units: input and output size.
        nLayers: number of layers in the residual branch.
        layer: layer class (called with in_features, out_features, bias=False, **layer_kwargs).
        **layer_kwargs: e.g. ``activation="silu"``.
    """

    def __init__(self, units: int, nLayers: int = 2, layer: type[nn.Module] = Dense, **layer_kwargs) -> None:
        super().__init__()
        self.dense_mlp = nn.Sequential(
            *[layer(in_features=units, out_features=units, bias=False, **layer_kwargs) for _ in range(nLayers)]
        )
        self.inv_sqrt_2 = INV_SQRT_2

    def forward(self, input: Tensor) -> Tensor:
        if len(self.dense_mlp) == 0:
            return input * (2.0 * self.inv_sqrt_2)
        # in place on the branch's fresh output (no backward reads it): no extra (n, units) tensors
        return self.dense_mlp(input).add_(input).mul_(self.inv_sqrt_2)


# --------------------------------------------------------------------------- embeddings


class AtomEmbedding(nn.Module):
    """Learned embedding per element; row ``Z - 1`` belongs to atomic number Z.

    Args:
        emb_size: embedding size.
        num_elements: number of rows; atomic numbers 1..num_elements are accepted.
    """

    def __init__(self, emb_size: int, num_elements: int) -> None:
        super().__init__()
        self.emb_size = emb_size
        self.num_elements = num_elements
        self.embeddings = nn.Embedding(num_elements, emb_size)
        nn.init.uniform_(self.embeddings.weight, a=-math.sqrt(3.0), b=math.sqrt(3.0))

    def forward(self, Z: Tensor) -> Tensor:
        """Atomic numbers (N,) int64 -> embeddings (N, emb_size)."""
        if Z.numel() > 0:
            lo, hi = int(Z.min()), int(Z.max())
            if lo < 1 or hi > self.num_elements:
                bad = lo if lo < 1 else hi
                raise DataError(
                    f"atomic number {bad} is outside the range 1..{self.num_elements} this GemNet-OC embeds",
                    fix=f"drop structures with such elements, or build the model with num_elements > {bad}",
                )
        return self.embeddings(Z - 1)


class EdgeEmbedding(nn.Module):
    """Edge embedding from [h_source, h_target, m] through one Dense layer.

    Args:
        atom_features: atom embedding size.
        edge_features: size of the per-edge input ``m``.
        out_features: output size.
        activation: activation of the dense layer.
    """

    def __init__(
        self,
        atom_features: int,
        edge_features: int,
        out_features: int,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation=activation, bias=False)

    def forward(self, h: Tensor, m: Tensor, edge_index: Tensor) -> Tensor:
        """h (N, atom_features), m (E, edge_features), edge_index (2, E) -> (E, out_features)."""
        return self.dense(torch.cat([h.index_select(0, edge_index[0]), h.index_select(0, edge_index[1]), m], dim=-1))


# --------------------------------------------------------------------------- efficient bilinear


def _to_padded(values: Tensor, outer: Tensor, inner: Tensor, num_outer: int) -> Tensor:
    """Scatter rows ``values[k]`` to ``out[outer[k], inner[k]]`` of a zero (num_outer, Kmax, ...) tensor."""
    kmax = int(inner.max()) + 1 if inner.numel() > 0 else 0
    # one flat row index (index_copy_) is cheaper than a two-index assignment, forwards and backwards
    out = values.new_zeros((num_outer * kmax, *values.shape[1:]))
    out.index_copy_(0, outer * kmax + inner, values)
    return out.view(num_outer, kmax, *values.shape[1:])


class BasisEmbedding(nn.Module):
    """Project a radial basis with a learned weight, optionally in the padded "efficient" layout.

    Without ``num_spherical`` the weight is (emb_size_interm, num_radial); with it the weight is
    (num_radial, num_spherical, emb_size_interm) and the circular/spherical basis is combined. As in
    fairchem, ``rad_basis @ weight.reshape(num_radial, -1)`` is read as (E, emb_size_interm,
    num_spherical) by a plain reshape (the weight's middle axis is not the spherical axis); kept so
    that fairchem weights load and act the same.

    Args:
        num_radial: radial basis size.
        emb_size_interm: intermediate embedding size.
        num_spherical: circular basis size (num_spherical**2 for the spherical basis), or None.
    """

    def __init__(self, num_radial: int, emb_size_interm: int, num_spherical: int | None = None) -> None:
        super().__init__()
        self.num_radial = num_radial
        self.num_spherical = num_spherical
        shape = (emb_size_interm, num_radial) if num_spherical is None else (num_radial, num_spherical, emb_size_interm)
        self.weight = nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_orthogonal_init(self.weight)

    def radial(self, rad_basis: Tensor, sph_size: int) -> Tensor:
        """(E, num_radial) -> rad_W1 (E, emb_size_interm, sph_size) (with num_spherical; see the class note)."""
        return (rad_basis @ self.weight.reshape(self.weight.shape[0], -1)).reshape(rad_basis.shape[0], -1, sph_size)

    def forward(
        self,
        rad_basis: Tensor,
        sph_basis: Tensor | None = None,
        idx_rad_outer: Tensor | None = None,
        idx_rad_inner: Tensor | None = None,
        idx_sph_outer: Tensor | None = None,
        idx_sph_inner: Tensor | None = None,
        num_atoms: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Embed the bases.

        Args:
            rad_basis: (E, num_radial) radial basis per edge.
            sph_basis: (T, num_spherical) circular/spherical basis per triplet/quadruplet, or None.
            idx_rad_outer, idx_rad_inner: (E,) atom of each edge and the edge's slot at that atom;
                given, the result is padded to (num_atoms, emb_size_interm, Kmax * ...).
            idx_sph_outer, idx_sph_inner: (T,) output edge of each triplet and its slot there.
            num_atoms: number of atoms (with idx_rad_*).

        Returns:
            no sph_basis: (E, emb_size_interm) or padded per atom;
            sph_basis without idx_sph_inner: (T, emb_size_interm);
            otherwise (rad_W1 (E, emb_size_interm, num_spherical), sph (E, num_spherical, Kmax)).
        """
        num_edges = rad_basis.shape[0]
        if self.num_spherical is None:
            rad_W1 = rad_basis @ self.weight.T
        else:
            rad_W1 = self.radial(rad_basis, sph_basis.shape[-1])

        if idx_rad_inner is not None:
            padded = _to_padded(rad_W1, idx_rad_outer, idx_rad_inner, num_atoms)
            # (num_atoms, Kmax, interm, ...) -> (num_atoms, interm, Kmax * ...)
            rad_W1 = padded.transpose(1, 2).reshape(num_atoms, rad_W1.shape[1], -1)

        if sph_basis is None:
            return rad_W1
        if idx_sph_inner is None:
            # (T, interm, num_spherical) @ (T, num_spherical, 1)
            return (rad_W1.index_select(0, idx_sph_outer) @ sph_basis[:, :, None]).squeeze(-1)
        sph = _to_padded(sph_basis, idx_sph_outer, idx_sph_inner, num_edges).transpose(1, 2)
        return rad_W1, sph


class EfficientInteractionBilinear(nn.Module):
    """Bilinear combination of basis and neighbour messages, summed over neighbours, in padded form.

    Args:
        emb_size_in: size of the incoming triplet/quadruplet messages.
        emb_size_interm: intermediate size of the basis embedding.
        emb_size_out: output size.
    """

    def __init__(self, emb_size_in: int, emb_size_interm: int, emb_size_out: int) -> None:
        super().__init__()
        self.emb_size_in = emb_size_in
        self.emb_size_interm = emb_size_interm
        self.emb_size_out = emb_size_out
        self.bilinear = Dense(emb_size_in * emb_size_interm, emb_size_out, bias=False, activation=None)

    def forward(
        self,
        basis: tuple[Tensor, Tensor],
        m: Tensor,
        idx_agg_outer: Tensor,
        idx_agg_inner: Tensor,
        idx_agg2_outer: Tensor | None = None,
        idx_agg2_inner: Tensor | None = None,
        agg2_out_size: int | None = None,
    ) -> Tensor:
        """Aggregate.

        Args:
            basis: (rad_W1, sph) from BasisEmbedding: (E or A, interm, S[*K2]) and (E, S, Kmax).
            m: (T, emb_size_in) messages of the intermediate triplets/quadruplets.
            idx_agg_outer, idx_agg_inner: (T,) output edge and slot of each message.
            idx_agg2_outer, idx_agg2_inner: (E,) output atom and slot of each edge (second aggregation).
            agg2_out_size: number of output atoms for the second aggregation.

        Returns:
            (E, emb_size_out), or (agg2_out_size, emb_size_out) with the second aggregation.
        """
        rad_W1, sph = basis
        num_edges = sph.shape[0]
        m_padded = _to_padded(m, idx_agg_outer, idx_agg_inner, num_edges)  # (E, Kmax, in)
        sph_m = sph @ m_padded  # (E, S, in)
        if idx_agg2_outer is not None:
            sph_m = _to_padded(sph_m, idx_agg2_outer, idx_agg2_inner, agg2_out_size)  # (A, K2, S, in)
            sph_m = sph_m.reshape(agg2_out_size, -1, sph_m.shape[-1])  # (A, K2 * S, in)
        return self.combine(rad_W1, sph_m)

    def combine(self, rad_W1: Tensor, sph_m: Tensor) -> Tensor:
        """rad_W1 (E, interm, S) and basis-weighted message sums sph_m (E, S, in) -> (E, emb_size_out)."""
        out = rad_W1 @ sph_m  # (E, interm, in)
        return self.bilinear(out.reshape(out.shape[0], out.shape[1:].numel()))
