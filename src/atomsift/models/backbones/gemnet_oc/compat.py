"""fairchem-core 1.10 GemNet-OC -> atomsift GemNetOC: configs, weights, and fairchem's output heads.

    backbone, heads, report = gemnet_from_fairchem(ckpt["config"]["model"], ckpt["state_dict"])
    report.raise_if(strict=True)              # ConfigError on missing / unexpected weights
    model = FairchemGemNetOC(backbone, heads)
    out = model(batch)                        # {"energy": (B,) , "forces": (N, 3)} as fairchem computes them

The backbone gets every weight but fairchem's last two layers, ``out_energy`` (emb_size_atom -> 1) and
``out_forces`` (emb_size_edge -> 1); those live in :class:`FairchemOutputHeads`. Scale factors are read
from the state_dict only, never from a scale file: factors missing there stay unfitted and are listed in
``report.unfitted_scale_factors`` (fit them with ``ensure_scale_factors``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from atomsift.errors import ConfigError
from atomsift.models.backbones.gemnet_oc.layers import Dense
from atomsift.models.backbones.gemnet_oc.model import GemNetOC, GemNetOCOutput
from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor, scale_factors_from_file_dict
from atomsift.models.checkpoint import LoadReport
from atomsift.models.heads import forces_from_edges, gradient_forces, reduce_atoms

__all__ = [
    "FairchemGemNetOC",
    "FairchemOutputHeads",
    "LoadReport",
    "direct_forces_from_edges",
    "energy_from_atoms",
    "fairchem_ema_state_dict",
    "fairchem_parameter_names",
    "gemnet_from_fairchem",
    "gradient_forces",
    "strip_prefixes",
]

# fairchem-core 1.10 GemNetOC defaults where atomsift's GemNetOC differs or needs them explicitly
_FAIRCHEM_DEFAULTS: dict[str, Any] = {
    "num_atom_emb_layers": 0,
    "num_global_out_layers": 2,
    "direct_forces": False,
    "use_pbc": True,
    "cutoff": 6.0,
    "max_neighbors": 50,
    "enforce_max_neighbors_strictly": True,
    "activation": "silu",
    "quad_interaction": False,
    "atom_edge_interaction": False,
    "edge_atom_interaction": False,
    "atom_interaction": False,
    "scale_basis": False,
    "qint_tags": [0, 1, 2],
    "num_elements": 83,
}
_HEAD_KEYS = {"regress_forces": True, "extensive": True, "forces_coupled": False}
# accepted, no effect on atomsift's outputs (why, for the report)
_IGNORED_KEYS: dict[str, str] = {
    "name": "model name",
    "otf_graph": "atomsift always builds graphs on the fly",
    "use_pbc_single": "graphs are the same whether built per structure or per batch",
    "scale_backprop_forces": "mixed-precision trick of fairchem's gradient forces; float32 results are unchanged",
    "output_init": "initialisation only; weights come from the state_dict",
    "num_atoms": "legacy fairchem trainer argument, unused by GemNet-OC",
    "bond_feat_dim": "legacy fairchem trainer argument, unused by GemNet-OC",
    "num_targets": "legacy fairchem trainer argument, unused by GemNet-OC 1.10 (one energy output)",
}
_MODEL_NAMES = {"gemnet_oc", "gemnetoc"}


# --------------------------------------------------------------------------- head maths


def energy_from_atoms(per_atom: Tensor, batch_index: Tensor, num_structures: int, extensive: bool = True) -> Tensor:
    """Per-structure energies (B,) from per-atom values (N, 1) or (N,): sum (extensive) or mean over atoms."""
    values = per_atom.reshape(per_atom.shape[0], -1)
    return reduce_atoms(values, batch_index, num_structures, "sum" if extensive else "mean")[:, 0]


def direct_forces_from_edges(
    per_edge: Tensor, edge_unit: Tensor, target: Tensor, num_atoms: int, id_swap: Tensor | None = None
) -> Tensor:
    """Forces (N, 3) as `forces_from_edges`, optionally with fairchem's ``forces_coupled``.

    Args:
        id_swap: (E,) reverse edge of each edge; given, f_e is replaced by the mean over the edge and its
            reverse (fairchem's ``forces_coupled``).
    """
    f = per_edge.reshape(-1)
    if id_swap is not None:
        f = (f + f[id_swap]) / 2
    return forces_from_edges(f, edge_unit, target, num_atoms)


class FairchemOutputHeads(nn.Module):
    """fairchem's last layers: ``out_energy`` (atoms -> energy) and ``out_forces`` (edges -> force scalar).

    Args:
        emb_size_atom: backbone node_dim.
        emb_size_edge: backbone edge_dim (direct forces only).
        direct_forces: forces from edges (True) or -dE/dx (False).
        regress_forces: compute forces at all.
        extensive: energy summed (True) or averaged over atoms.
        forces_coupled: average the force scalar of every edge with its reverse's.
    """

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int | None = None,
        *,
        direct_forces: bool = True,
        regress_forces: bool = True,
        extensive: bool = True,
        forces_coupled: bool = False,
    ) -> None:
        super().__init__()
        self.direct_forces = direct_forces
        self.regress_forces = regress_forces
        self.extensive = extensive
        self.forces_coupled = forces_coupled
        self.out_energy = Dense(emb_size_atom, 1, bias=False, activation=None)
        if direct_forces:
            if emb_size_edge is None:
                raise ConfigError("direct forces need emb_size_edge", fix="pass the backbone's edge_dim")
            self.out_forces = Dense(emb_size_edge, 1, bias=False, activation=None)

    def forward(
        self, out: GemNetOCOutput, batch: Any, positions: Tensor | None = None, create_graph: bool = True
    ) -> dict[str, Tensor]:
        """{"energy": (B,) eV, "forces": (N, 3) eV/A}; gradient forces need the ``positions`` tensor the
        backbone read (with requires_grad)."""
        energy = energy_from_atoms(self.out_energy(out.node), batch.batch, batch.num_structures, self.extensive)
        result = {"energy": energy}
        if not self.regress_forces:
            return result
        if self.direct_forces:
            if out.edge is None:
                raise ConfigError("the backbone returned no edge features", fix="build it with direct_forces=True")
            result["forces"] = direct_forces_from_edges(
                self.out_forces(out.edge),
                out.edge_unit,
                out.edge_index[1],
                batch.num_atoms,
                out.id_swap if self.forces_coupled else None,
            )
        else:
            if positions is None or not positions.requires_grad:
                raise RuntimeError("gradient forces need the positions (requires_grad) the backbone read")
            result["forces"] = gradient_forces(energy, positions, create_graph=create_graph)
        return result


class FairchemGemNetOC(nn.Module):
    """Backbone + fairchem output heads: the same energies and forces as fairchem's GemNetOC.forward."""

    def __init__(self, backbone: GemNetOC, heads: FairchemOutputHeads) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(self, batch: Any) -> dict[str, Tensor]:
        """{"energy": (B,), "forces": (N, 3)}. Gradient forces keep their graph while training."""
        needs_grad = self.heads.regress_forces and not self.heads.direct_forces
        positions = None
        if needs_grad:
            positions = batch.positions.detach().requires_grad_(True)
            batch = dataclasses.replace(batch, positions=positions)
        with torch.set_grad_enabled(torch.is_grad_enabled() or needs_grad):
            out = self.backbone(batch)
            return self.heads(out, batch, positions=positions, create_graph=self.training)


# --------------------------------------------------------------------------- loading


def strip_prefixes(state_dict: Mapping[str, Tensor], prefixes: tuple[str, ...] = ("module.",)) -> dict[str, Tensor]:
    """Remove wrapper prefixes such as DDP's ``module.`` (repeatedly) from every key."""
    pattern = re.compile("^(?:" + "|".join(re.escape(p) for p in prefixes) + ")+")
    return {pattern.sub("", k): v for k, v in state_dict.items()}


def _split_config(model_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str], list[str]]:
    """(backbone kwargs, head kwargs, ignored keys, notes); ConfigError for keys fairchem's GemNetOC lacks."""
    config = dict(model_config)
    name = str(config.get("name", "gemnet_oc")).lower().replace("-", "_")
    if name not in _MODEL_NAMES:
        raise ConfigError(
            f"model '{config.get('name')}' is not a fairchem GemNet-OC",
            fix="pass the 'model' section of a fairchem-core 1.10 gemnet_oc config",
        )
    backbone_keys = set(inspect.signature(GemNetOC.__init__).parameters) - {"self", "absolute_rbf_cutoff"}
    unknown = sorted(set(config) - backbone_keys - set(_HEAD_KEYS) - set(_IGNORED_KEYS) - {"scale_file"})
    if unknown:
        raise ConfigError(
            f"unknown fairchem GemNet-OC config key(s): {', '.join(unknown)}",
            fix="remove them, or check that the config is a fairchem-core 1.10 gemnet_oc model section",
        )
    backbone = {**_FAIRCHEM_DEFAULTS, **{k: v for k, v in config.items() if k in backbone_keys}}
    heads = {k: config.get(k, default) for k, default in _HEAD_KEYS.items()}
    heads["direct_forces"] = bool(backbone["direct_forces"])
    ignored = sorted(k for k in config if k in _IGNORED_KEYS)
    notes = [f"config key '{k}' ignored: {_IGNORED_KEYS[k]}" for k in ignored if k != "name"]
    if backbone.get("activation") is not None:
        backbone["activation"] = str(backbone["activation"])
    return backbone, heads, ignored, notes


def gemnet_from_fairchem(
    model_config: Mapping[str, Any], state_dict: Mapping[str, Tensor]
) -> tuple[GemNetOC, FairchemOutputHeads, LoadReport]:
    """Build atomsift's GemNetOC and fairchem's output heads from a fairchem-core 1.10 checkpoint.

    Args:
        model_config: the ``config["model"]`` dict of the checkpoint (name, num_spherical, ..., cutoff, ...).
        state_dict: its ``state_dict`` (``module.`` prefixes are stripped).

    Returns:
        (backbone, heads, report); weights are loaded non-strictly, see ``report.raise_if(strict=True)``.

    Raises:
        ConfigError: the config is not a GemNet-OC one or has keys fairchem's GemNetOC does not take.
    """
    backbone_kwargs, head_kwargs, ignored, notes = _split_config(model_config)
    backbone = GemNetOC(**backbone_kwargs)
    heads = FairchemOutputHeads(
        backbone.node_dim,
        backbone.edge_dim,
        direct_forces=head_kwargs["direct_forces"],
        regress_forces=bool(head_kwargs["regress_forces"]),
        extensive=bool(head_kwargs["extensive"]),
        forces_coupled=bool(head_kwargs["forces_coupled"]),
    )
    weights = strip_prefixes(state_dict)
    report = LoadReport(ignored_config_keys=ignored, notes=notes)

    scale_file = model_config.get("scale_file")
    scale_keys = {f"{n}.scale_factor" for n, m in backbone.named_modules() if isinstance(m, ScaleFactor)}
    if isinstance(scale_file, Mapping):  # inline {path: value}: not a file, so it is honoured
        inline = scale_factors_from_file_dict(scale_file)
        weights = {**inline, **weights}
        report.notes.append(f"{len(inline)} scale factor(s) taken from the inline scale_file dict")

    head_weights = {k: v for k, v in weights.items() if k.startswith(("out_energy.", "out_forces."))}
    body_weights = {k: v for k, v in weights.items() if k not in head_weights}
    result = backbone.load_state_dict(body_weights, strict=False)
    head_result = heads.load_state_dict(head_weights, strict=False)
    report.missing_keys = [k for k in result.missing_keys if k not in scale_keys]
    report.missing_keys += list(head_result.missing_keys)
    report.unexpected_keys = list(result.unexpected_keys) + list(head_result.unexpected_keys)
    report.unfitted_scale_factors = sorted(
        n for n, m in backbone.named_modules() if isinstance(m, ScaleFactor) and not m.fitted
    )
    if isinstance(scale_file, str) and scale_file:
        if report.unfitted_scale_factors:
            report.notes.append(
                f"scale_file '{scale_file}' is not read (atomsift takes scale factors from checkpoints only); "
                f"{len(report.unfitted_scale_factors)} scale factor(s) are unfitted: fit them with "
                "ensure_scale_factors(model, batches), or convert the file with scale_factors_from_file_dict"
            )
        else:
            report.notes.append(f"scale_file '{scale_file}' not read: the state_dict holds every scale factor")
    elif report.unfitted_scale_factors:
        report.notes.append(
            f"{len(report.unfitted_scale_factors)} scale factor(s) have no value; fit them with ensure_scale_factors"
        )
    return backbone, heads, report


# --------------------------------------------------------------------------- EMA weights


def fairchem_parameter_names(backbone: GemNetOC, heads: FairchemOutputHeads) -> list[str]:
    """Keys of fairchem's trainable parameters in fairchem's order (its EMA ``shadow_params`` order).

    fairchem registers ``out_energy`` right after ``out_mlp_E`` and ``out_forces`` after ``out_mlp_F``;
    atomsift's backbone registers everything else in fairchem's order, and its scale factors are buffers
    (fairchem's are parameters without gradient, which its EMA skips).
    """
    names = [name for name, _ in backbone.named_parameters()]
    last_e = max(i for i, name in enumerate(names) if name.startswith("out_mlp_E."))
    names.insert(last_e + 1, "out_energy.linear.weight")
    if heads.direct_forces:
        names.append("out_forces.linear.weight")
    return names


def fairchem_ema_state_dict(
    shadow_params: list[Tensor], backbone: GemNetOC, heads: FairchemOutputHeads
) -> dict[str, Tensor]:
    """fairchem's EMA weights (``checkpoint["ema"]["shadow_params"]``, a list) as a state_dict with fairchem's
    keys, ready for :func:`gemnet_from_fairchem` in place of ``checkpoint["state_dict"]`` (scale factors and
    other buffers must still come from the state_dict: merge the two).

    Raises:
        ConfigError: the list does not have one tensor of the right shape per trainable parameter.
    """
    names = fairchem_parameter_names(backbone, heads)
    shapes = {k: v.shape for k, v in backbone.state_dict().items()}
    shapes.update({k: v.shape for k, v in heads.state_dict().items()})
    if len(shadow_params) != len(names):
        raise ConfigError(
            f"the fairchem EMA holds {len(shadow_params)} tensors but the model has {len(names)} trainable parameters",
            fix="check that the checkpoint's config matches its weights, or load the non-EMA state_dict",
        )
    for name, tensor in zip(names, shadow_params):
        if tuple(tensor.shape) != tuple(shapes[name]):
            raise ConfigError(
                f"fairchem EMA tensor for {name} has shape {tuple(tensor.shape)}, expected {tuple(shapes[name])}",
                fix="check that the checkpoint's config matches its weights",
            )
    return dict(zip(names, shadow_params))
