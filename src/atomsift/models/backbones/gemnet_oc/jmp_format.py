"""JMP's checkpoint format: key names, backbone-config fields, and writing JMP-style checkpoints.

The reading side (``read_jmp_checkpoint``, ``load_jmp_backbone``) is ``jmp.py``, which re-exports the
public names of this module. A JMP state_dict keeps the atom embedding outside the backbone
(``embedding.atom_embedding.weight``), the radial bases, shared basis projections and edge embedding under
``backbone.bases.``, the global output MLPs as ``backbone.out_mlp_E.out_mlp.*`` and one head per pretraining
dataset under ``output.``; atomsift's names are fairchem-core 1.10's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from atomsift.errors import ConfigError

__all__ = [
    "ATOMSIFT_TO_JMP",
    "EMBEDDING_KEY",
    "JMP_DROPPED",
    "JMP_TO_ATOMSIFT",
    "atomsift_to_jmp_key",
    "jmp_ema_parameter_keys",
    "jmp_to_atomsift_key",
    "to_jmp_checkpoint",
    "to_jmp_state_dict",
]


EMBEDDING_KEY = "embedding.atom_embedding.weight"
"""Where JMP keeps the atom embedding (outside the backbone); atomsift's key is ``atom_emb.embeddings.weight``."""

JMP_TO_ATOMSIFT: tuple[tuple[str, str], ...] = (
    (r"^embedding\.atom_embedding\.weight$", "atom_emb.embeddings.weight"),
    (r"^backbone\.bases\.(.+)$", r"\1"),
    (r"^backbone\.out_mlp_([EF])\.out_mlp\.(.+)$", r"out_mlp_\1.\2"),
    (r"^backbone\.(int_blocks|out_blocks)\.(.+)$", r"\1.\2"),
)
"""(JMP key regex, atomsift replacement); the first rule that matches applies."""

ATOMSIFT_TO_JMP: tuple[tuple[str, str], ...] = (
    (r"^atom_emb\.embeddings\.weight$", EMBEDDING_KEY),
    (r"^out_mlp_([EF])\.(.+)$", r"backbone.out_mlp_\1.out_mlp.\2"),
    (r"^(int_blocks|out_blocks)\.(.+)$", r"backbone.\1.\2"),
    (r"^((?:edge_emb|radial_basis\w*|cbf_basis_\w+|sbf_basis_\w+|mlp_\w+)\..+)$", r"backbone.bases.\1"),
)
"""(atomsift key regex, JMP replacement); keys matching none (e.g. fairchem's out_energy) have no JMP place."""

JMP_DROPPED: dict[str, str] = {
    r"\.rbf\.temps$": "Gaussian widths, a constant fixed by the number of radial functions (checked, then dropped)",
    r"^task_steps\.": "pretraining step counters",
    r"^output\.": "per-dataset output heads (returned separately in JmpWeights.heads)",
}
"""JMP state_dict keys that are not backbone weights (regex -> why)."""

# JMP BackboneConfig fields copied unchanged into atomsift's GemNetOC (same names, same meaning)
COPIED_FIELDS = (
    "num_spherical",
    "num_radial",
    "num_blocks",
    "emb_size_atom",
    "emb_size_edge",
    "emb_size_trip_in",
    "emb_size_trip_out",
    "emb_size_quad_in",
    "emb_size_quad_out",
    "emb_size_aint_in",
    "emb_size_aint_out",
    "emb_size_rbf",
    "emb_size_cbf",
    "emb_size_sbf",
    "num_before_skip",
    "num_after_skip",
    "num_concat",
    "num_atom",
    "num_output_afteratom",
    "num_atom_emb_layers",
    "num_global_out_layers",
    "direct_forces",
    "rbf",
    "rbf_spherical",
    "envelope",
    "cbf",
    "sbf",
    "quad_interaction",
    "atom_edge_interaction",
    "edge_atom_interaction",
    "atom_interaction",
    "scale_basis",
    "qint_tags",
    "num_elements",
)
# JMP fields without effect on the backbone's outputs in atomsift (why)
NO_EFFECT_FIELDS = {
    "num_targets": "the output heads are separate",
    "regress_energy": "the output heads are separate",
    "regress_forces": "the output heads are separate",
    "extensive": "the output heads are separate",
    "forces_coupled": "not used by JMP's backbone",
    "use_pbc": "atomsift reads pbc per structure",
    "otf_graph": "atomsift always builds graphs",
    "scale_backprop_forces": "not used with direct forces",
    "scale_file": "scale factors are read from the state_dict",
    "output_init": "initialisation only",
    "dropout": "training only",
    "edge_dropout": "training only (JMP drops edges and rescales when training)",
}
# JMP fields whose value must be the default for atomsift to reproduce JMP (field -> required value)
REQUIRED_FIELDS = {
    "unique_basis_per_layer": False,
    "learnable_rbf": False,
    "learnable_rbf_stds": False,
    "ln": False,
    "replace_scale_factors_with_ln": False,
    "old_gaussian_implementation": False,
}
GRAPH_FIELDS = ("absolute_rbf_cutoff",)
ACTIVATIONS = {"scaled_silu": "silu", "scaled_swish": "silu"}  # fairchem's / atomsift's "silu" is the scaled SiLU
SILU_SCALE = 1.0 / 0.6  # ScaledSiLU(x) = SiLU(x) / 0.6


# --------------------------------------------------------------------------- key mapping


def _apply(rules: tuple[tuple[str, str], ...], key: str) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def jmp_to_atomsift_key(key: str) -> str | None:
    """atomsift name of a JMP state_dict key, or None for keys that are not backbone weights (or unknown)."""
    if any(re.search(p, key) for p in JMP_DROPPED):
        return None
    return _apply(JMP_TO_ATOMSIFT, key)


def atomsift_to_jmp_key(key: str) -> str:
    """JMP name of an atomsift GemNetOC state_dict key; ConfigError for keys JMP's backbone does not have."""
    out = _apply(ATOMSIFT_TO_JMP, key)
    if out is None:
        raise ConfigError(
            f"atomsift GemNet-OC key '{key}' has no place in a JMP checkpoint",
            fix="pass the backbone's state_dict only (fairchem's out_energy / out_forces are heads, not backbone)",
        )
    return out


def jmp_ema_parameter_keys(keys: Iterable[str], *, ignore_scale_factor: bool = True) -> list[str]:
    """The state_dict keys that JMP's EMA tuple covers, in the tuple's order.

    The tuple follows the module's parameter order; the same order is the state_dict's with the buffers
    (``rbf.offset``, ``rbf.temps``, ``scale_factor``), the ``task_steps`` counters and the duplicate
    ``seq_energy_pre`` names removed (JMP's finetuning loader uses this rule; it was checked against
    ``named_parameters()`` of JMP's own model for JMP-S and JMP-L).
    """
    out = []
    for k in keys:
        if k.endswith(("rbf.offset", "rbf.temps")) or ".seq_energy_pre." in k or k.startswith("task_steps"):
            continue
        if ignore_scale_factor and k.endswith("scale_factor"):
            continue
        out.append(k)
    return out


def _jmp_group(key: str) -> int:
    """Rank of a JMP key in JMP's module order: embedding, bases, edge_emb, blocks, global MLPs, heads."""
    order = (
        r"^embedding\.",
        r"^backbone\.bases\.(?!edge_emb\.)",
        r"^backbone\.bases\.edge_emb\.",
        r"^backbone\.int_blocks\.",
        r"^backbone\.out_blocks\.",
        r"^backbone\.out_mlp_E\.",
        r"^backbone\.out_mlp_F\.",
        r"^backbone\.",
        r"^output\.out_energy\.",
        r"^output\.out_forces\.",
    )
    return next((i for i, p in enumerate(order) if re.match(p, key)), len(order))


# --------------------------------------------------------------------------- writing


def to_jmp_state_dict(
    backbone_state_dict: Mapping[str, Tensor],
    *,
    heads: Mapping[str, Mapping[str, Tensor]] | None = None,
    task_steps: bool = False,
) -> dict[str, Tensor]:
    """atomsift GemNetOC weights (and JMP-layout heads) as a JMP ``state_dict``, in JMP's key order.

    Gaussian ``rbf.temps`` entries are added after each ``rbf.offset``. ``heads`` maps dataset names to
    ``JmpWeights.heads``-style dicts; ``task_steps`` adds JMP's step counters (one per head).
    """
    out: dict[str, Tensor] = {}
    for key, value in backbone_state_dict.items():
        new = atomsift_to_jmp_key(key)
        out[new] = value
        if key.endswith("rbf.offset"):
            n = value.numel()
            out[new[: -len("offset")] + "temps"] = torch.full_like(value, 0.5 * (n - 1) ** 2)
    for i, head in enumerate((heads or {}).values()):
        for key, value in head.items():
            part, rest = key.split(".", 1)
            out[f"output.out_{part}.{i}.{rest}"] = value
    ordered = dict(sorted(out.items(), key=lambda kv: _jmp_group(kv[0])))  # sorted() is stable
    if task_steps:
        for name in heads or {}:
            ordered[f"task_steps._module_dict._typed_moduledict_{name}.value"] = torch.tensor(0.0)
    return ordered


def _jmp_config_from_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {k: hparams[k] for k in COPIED_FIELDS if k in hparams}
    cfg.update(
        activation="scaled_silu",
        regress_forces=True,
        regress_energy=True,
        use_pbc=True,
        otf_graph=False,
        absolute_rbf_cutoff=hparams.get("absolute_rbf_cutoff") or hparams.get("cutoff", 12.0),
        scale_file=None,
        dropout=None,
        edge_dropout=None,
        unique_basis_per_layer=False,
        learnable_rbf=False,
        learnable_rbf_stds=False,
    )
    return cfg


def to_jmp_checkpoint(
    backbone_state_dict: Mapping[str, Tensor],
    hparams: Mapping[str, Any],
    *,
    ema_state_dict: Mapping[str, Tensor] | None = None,
    heads: Mapping[str, Mapping[str, Tensor]] | None = None,
) -> dict[str, Any]:
    """A JMP-style Lightning checkpoint dict: state_dict, hyper_parameters, and the EMA tuple when given.

    Args:
        backbone_state_dict: atomsift GemNetOC weights (raw).
        hparams: the GemNetOC's hparams() (written as JMP's hyper_parameters["backbone"]).
        ema_state_dict: EMA weights with the same keys; written as optimizer_states[0]["ema"] in JMP's order.
        heads: per dataset, JMP-layout head weights (as JmpWeights.heads).
    """
    state = to_jmp_state_dict(backbone_state_dict, heads=heads, task_steps=bool(heads))
    ckpt: dict[str, Any] = {
        "state_dict": state,
        "hyper_parameters": {
            "backbone": _jmp_config_from_hparams(hparams),
            "tasks": [{"name": n, "node_energy_reduction": "sum"} for n in heads or {}],
        },
        "optimizer_states": [{}],
    }
    if ema_state_dict is not None:
        ema = to_jmp_state_dict(ema_state_dict, heads=heads)
        ckpt["optimizer_states"] = [{"ema": tuple(ema[k] for k in jmp_ema_parameter_keys(state))}]
    return ckpt
