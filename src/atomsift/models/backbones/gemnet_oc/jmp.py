"""JMP checkpoints (jmp-s.pt, jmp-l.pt and JMP's own Lightning pretraining files) <-> atomsift GemNet-OC.

    obj = torch.load("jmp-s.pt", map_location="cpu")      # or atomsift.models.checkpoint.read_checkpoint_file
    w = read_jmp_checkpoint(obj)                           # EMA weights by default
    model = GemNetOC(**w.hparams)
    model.load_state_dict(w.backbone)                      # every key: embedding, bases, blocks, scale factors
    backbone, w, report = load_jmp_backbone(obj)           # the same, with a report of missing / unexpected keys

    ckpt = to_jmp_checkpoint(model.state_dict(), model.hparams())   # the reverse (fake checkpoints for tests)

A JMP pretraining checkpoint is a PyTorch Lightning dict. Its ``state_dict`` holds the atom embedding
(``embedding.atom_embedding.weight``, outside the backbone), the backbone (``backbone.*``, with the radial
bases, shared basis projections and edge embedding under ``backbone.bases.``, and the global output MLPs
wrapped as ``backbone.out_mlp_E.out_mlp.*``), one energy and one force head per pretraining dataset
(``output.out_energy.<i>.*``, ``output.out_forces.<i>.*``) and step counters (``task_steps.*``).
The exponential moving average of the weights is ``optimizer_states[0]["ema"]``: a tuple with one tensor per
trained parameter, in the order of the module's parameters, which is the order of the ``state_dict`` keys
without buffers (Gaussian ``rbf.offset`` / ``rbf.temps``, ``scale_factor``), without ``task_steps`` and
without ``seq_energy_pre`` (a second name of each output block's ``layers``). ``hyper_parameters["backbone"]``
holds the architecture. docs/jmp.md lists every difference from fairchem's GemNet-OC and how each was checked.

Key mapping (data: ``JMP_TO_ATOMSIFT``, ``ATOMSIFT_TO_JMP``; atomsift names are fairchem-core 1.10's),
the backbone-config field tables and the writing side (``to_jmp_checkpoint``) live in ``jmp_format.py`` and
are re-exported here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from atomsift.errors import ConfigError, DataError
from atomsift.models.backbones.gemnet_oc.jmp_format import (
    ACTIVATIONS,
    ATOMSIFT_TO_JMP,
    COPIED_FIELDS,
    EMBEDDING_KEY,
    GRAPH_FIELDS,
    JMP_DROPPED,
    JMP_TO_ATOMSIFT,
    NO_EFFECT_FIELDS,
    REQUIRED_FIELDS,
    SILU_SCALE,
    atomsift_to_jmp_key,
    jmp_ema_parameter_keys,
    jmp_to_atomsift_key,
    to_jmp_checkpoint,
    to_jmp_state_dict,
)

__all__ = [
    "ATOMSIFT_TO_JMP",
    "EMBEDDING_KEY",
    "JMP_DROPPED",
    "JMP_TO_ATOMSIFT",
    "JmpWeights",
    "atomsift_head_weights",
    "atomsift_to_jmp_key",
    "hparams_from_jmp",
    "jmp_ema_parameter_keys",
    "jmp_to_atomsift_key",
    "load_jmp_backbone",
    "read_jmp_checkpoint",
    "to_jmp_checkpoint",
    "to_jmp_state_dict",
]


@dataclass
class JmpWeights:
    """What a JMP checkpoint holds, in atomsift terms.

    Attributes:
        backbone: atomsift GemNetOC state_dict (fairchem-style keys), embedding and scale factors included.
        hparams: GemNetOC keyword arguments (graph settings from read_jmp_checkpoint's arguments).
        heads: per pretraining dataset, {"energy.<i>.weight" | "energy.<i>.bias" | "forces.<i>...": tensor} in
            JMP's layout (Linear layers at even indices, scaled SiLU between); see ``atomsift_head_weights``.
        tasks: per dataset, {"name", "node_energy_reduction", "normalization"} from hyper_parameters (if any).
        used_ema: the weights are the exponential moving average.
        jmp_backbone_config: hyper_parameters["backbone"] as stored ({} when absent).
        requires: settings atomsift must honour to give JMP's outputs, e.g. {"absolute_rbf_cutoff": 12.0}.
        unexpected: JMP keys with no place in atomsift's GemNet-OC.
        notes: one sentence per thing the user should know.
    """

    backbone: dict[str, Tensor]
    hparams: dict[str, Any]
    heads: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    used_ema: bool = False
    jmp_backbone_config: dict[str, Any] = field(default_factory=dict)
    requires: dict[str, Any] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "model_dump"):
        return dict(value.model_dump())
    return dict(vars(value)) if hasattr(value, "__dict__") else {}


def _check_is_jmp(obj: Any) -> dict[str, Tensor]:
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not any(str(k).startswith("backbone.") for k in state):
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise DataError(
            f"not a JMP checkpoint: expected a dict with a 'state_dict' holding 'backbone.*' weights (got {keys})",
            fix="pass the Lightning checkpoint itself (jmp-s.pt / jmp-l.pt), loaded with torch.load",
        )
    if EMBEDDING_KEY not in state:
        raise DataError(
            f"the JMP checkpoint has no atom embedding '{EMBEDDING_KEY}'; a backbone without it would run with a "
            "random embedding",
            fix="use a JMP pretraining checkpoint (the embedding is saved next to the backbone)",
        )
    return dict(state)


def _ema_tensors(obj: Mapping[str, Any]) -> list[Tensor] | None:
    found = [s["ema"] for s in obj.get("optimizer_states") or [] if isinstance(s, Mapping) and len(s.get("ema") or ())]
    if len(found) > 1:
        raise DataError(
            f"the checkpoint has EMA weights for {len(found)} optimizers; JMP writes one",
            fix="load with ema=False, or pass a JMP checkpoint",
        )
    return list(found[0]) if found else None


def _apply_ema(state: dict[str, Tensor], ema: list[Tensor]) -> dict[str, Tensor]:
    keys = jmp_ema_parameter_keys(state)
    if len(ema) != len(keys):
        raise DataError(
            f"the EMA tuple has {len(ema)} tensors but the state_dict has {len(keys)} parameters",
            fix="load with ema=False to use the raw weights (the file may come from another JMP version)",
        )
    out = dict(state)
    for i, (k, v) in enumerate(zip(keys, ema)):
        if tuple(v.shape) != tuple(state[k].shape):
            raise DataError(
                f"EMA tensor {i} has shape {tuple(v.shape)} but parameter '{k}' has {tuple(state[k].shape)}",
                fix="load with ema=False to use the raw weights",
            )
        out[k] = v.detach().to(state[k].dtype)
    # seq_energy_pre is a second name of each output block's `layers`: it must carry the same (EMA) values, or
    # load_state_dict, which visits `layers` first and the alias second, would put the raw weights back
    for k in out:
        if ".seq_energy_pre." in k and (alias := k.replace(".seq_energy_pre.", ".layers.")) in out:
            out[k] = out[alias]
    return out


def _infer_size(state: Mapping[str, Tensor]) -> str | None:
    blocks = {int(m[1]) for k in state if (m := re.match(r"^backbone\.int_blocks\.(\d+)\.", k))}
    w = state.get("backbone.bases.edge_emb.dense.linear.weight")
    width = int(w.shape[0]) if w is not None else None
    return {(4, 512): "S", (6, 1024): "L"}.get((len(blocks), width))


def hparams_from_jmp(
    config: Mapping[str, Any], *, cutoff: float = 12.0, max_neighbors: int = 30, qint_tags: list[int] | None = None
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """GemNetOC keyword arguments from JMP's ``hyper_parameters["backbone"]``.

    Args:
        config: JMP BackboneConfig fields.
        cutoff: Angstrom, for all four graphs (JMP: 12 for OC20 / OC22, 8 for ANI-1x / Transition-1x).
        max_neighbors: main-graph limit; the other graphs get JMP's proportions 20/30, 8/30 and 1000/30.
        qint_tags: override of the tags that take part in quadruplets (default: the checkpoint's).

    Returns:
        (hparams, requires, notes): requires holds settings atomsift's GemNetOC must honour to match JMP.

    Raises:
        ConfigError: an option atomsift cannot reproduce (plain SiLU, per-layer bases, learned widths, ...).
    """
    cfg = dict(config)
    hp: dict[str, Any] = {k: cfg[k] for k in COPIED_FIELDS if k in cfg}
    missing = [k for k in ("num_blocks", "emb_size_atom", "emb_size_edge", "num_radial") if k not in hp]
    if missing:
        raise ConfigError(
            f"the JMP backbone config lacks {', '.join(missing)}",
            fix="pass size='S' or 'L' for the released JMP checkpoints",
        )
    act = str(cfg.get("activation", "scaled_silu")).lower()
    if act not in ACTIVATIONS:
        raise ConfigError(
            f"JMP activation '{act}' is not supported (atomsift's GemNet-OC has the scaled SiLU only)",
            fix="use a checkpoint trained with activation 'scaled_silu' (JMP-S / JMP-L)",
        )
    hp["activation"] = ACTIVATIONS[act]
    for key, value in REQUIRED_FIELDS.items():
        if bool(cfg.get(key, value)) != value:
            raise ConfigError(
                f"JMP option {key}={cfg[key]!r} is not supported by atomsift's GemNet-OC",
                fix=f"use a checkpoint trained with {key}={value} (JMP-S / JMP-L)",
            )
    if qint_tags is not None:
        hp["qint_tags"] = list(qint_tags)
    hp.setdefault("qint_tags", [0, 1, 2])
    hp.update(
        cutoff=cutoff,
        cutoff_qint=cutoff,
        cutoff_aeaint=cutoff,
        cutoff_aint=cutoff,
        max_neighbors=max_neighbors,
        max_neighbors_aeaint=int(max_neighbors * 20 / 30),
        max_neighbors_qint=int(max_neighbors * 8 / 30),
        max_neighbors_aint=int(max_neighbors * 1000 / 30),
        enforce_max_neighbors_strictly=True,
        use_pbc=True,
    )
    notes: list[str] = []
    requires: dict[str, Any] = {}
    if cfg.get("absolute_rbf_cutoff"):
        requires["absolute_rbf_cutoff"] = float(cfg["absolute_rbf_cutoff"])
    if cfg.get("edge_dropout"):
        notes.append(f"JMP trained with edge dropout {cfg['edge_dropout']} (training only; evaluation drops no edges)")
    if set(hp["qint_tags"]) != {0, 1, 2}:
        notes.append(
            f"quadruplets use atoms tagged {hp['qint_tags']}: JMP tags every atom of a non-OC20/OC22 "
            "structure 2, so give such structures tag 2 (or pass qint_tags=[0, 1, 2])"
        )
    known = {*COPIED_FIELDS, *NO_EFFECT_FIELDS, *REQUIRED_FIELDS, *GRAPH_FIELDS, "activation"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        notes.append(f"JMP backbone option(s) ignored: {', '.join(f'{k}={cfg[k]!r}' for k in unknown)}")
    return hp, requires, notes


def _presets() -> dict[str, dict[str, Any]]:
    from atomsift.models.backbones.gemnet_oc.presets import PRESETS

    return PRESETS


def _fit_to_model_signature(hp: dict[str, Any], requires: dict[str, Any], notes: list[str]) -> None:
    """Move each required setting (e.g. absolute_rbf_cutoff) into hparams; a ConfigError if GemNetOC lacks one."""
    from atomsift.models.backbones.gemnet_oc.model import GemNetOC

    accepted = set(inspect.signature(GemNetOC.__init__).parameters)
    for key, value in requires.items():
        if key not in accepted:
            raise ConfigError(
                f"JMP setting {key}={value!r} has no counterpart in atomsift's GemNetOC",
                fix="report this: the checkpoint needs a GemNet-OC option atomsift lacks",
            )
        hp[key] = value


def read_jmp_checkpoint(
    obj: Mapping[str, Any],
    *,
    ema: bool = True,
    size: str | None = None,
    cutoff: float = 12.0,
    max_neighbors: int = 30,
    qint_tags: list[int] | None = None,
) -> JmpWeights:
    """Backbone weights, architecture and heads of a loaded JMP checkpoint, with atomsift's key names.

    Args:
        obj: the dict torch.load returned for jmp-s.pt / jmp-l.pt (or a JMP Lightning pretraining checkpoint).
        ema: use the EMA weights (``optimizer_states[0]["ema"]``) when present (a note says when absent).
        size: "S" or "L": the architecture when the file has no ``hyper_parameters`` (default: read from the
            weights' shapes: 4 blocks / edge width 512 is S, 6 / 1024 is L).
        cutoff, max_neighbors, qint_tags: graph settings, see ``hparams_from_jmp`` (defaults: JMP's OC20 graph).

    Raises:
        DataError: not a JMP checkpoint, no atom embedding, EMA tuple of the wrong length or shapes, or weights
            that do not fit the architecture.
        ConfigError: an architecture option atomsift's GemNet-OC cannot reproduce; unknown size.
    """
    state = _check_is_jmp(obj)
    notes: list[str] = []
    used_ema = False
    if ema:
        tensors = _ema_tensors(obj)
        if tensors is None:
            notes.append("the checkpoint has no EMA weights (optimizer_states[0]['ema']); using the raw weights")
        else:
            state, used_ema = _apply_ema(state, tensors), True

    hyper = _as_dict(obj.get("hyper_parameters"))
    config = _as_dict(hyper.get("backbone"))
    inferred = _infer_size(state)
    if config:
        hp, requires, more = hparams_from_jmp(config, cutoff=cutoff, max_neighbors=max_neighbors, qint_tags=qint_tags)
        if size is not None and inferred is not None and size != inferred:
            raise ConfigError(
                f"size='{size}' contradicts the checkpoint (its weights are JMP-{inferred})",
                fix="leave size unset; the checkpoint's hyper_parameters describe the model",
            )
    else:
        size = size or inferred
        if size not in ("S", "L"):
            raise ConfigError(
                "the checkpoint has no hyper_parameters and its weights match neither JMP-S nor JMP-L",
                fix="pass size='S' or size='L', or a checkpoint with hyper_parameters['backbone']",
            )
        preset = {k: v for k, v in _presets()[size].items() if k in COPIED_FIELDS}
        hp, requires, more = hparams_from_jmp(
            {**preset, "activation": "scaled_silu", "absolute_rbf_cutoff": 12.0},
            cutoff=cutoff,
            max_neighbors=max_neighbors,
            qint_tags=qint_tags,
        )
        notes.append(f"no hyper_parameters in the checkpoint: JMP-{size} architecture assumed")
    notes.extend(more)
    _fit_to_model_signature(hp, requires, notes)

    backbone: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        if key.endswith("rbf.temps"):
            _check_temps(key, value)
            continue
        new = jmp_to_atomsift_key(key)
        if new is not None:
            backbone[new] = value
        elif not any(re.search(p, key) for p in JMP_DROPPED):
            unexpected.append(key)
    _check_widths(backbone, hp)
    heads, tasks = _split_heads(state, hyper)
    return JmpWeights(
        backbone=backbone,
        hparams=hp,
        heads=heads,
        tasks=tasks,
        used_ema=used_ema,
        jmp_backbone_config=config,
        requires=requires,
        unexpected=unexpected,
        notes=notes,
    )


def _check_temps(key: str, temps: Tensor) -> None:
    """JMP's Gaussian widths must be the fixed 1 / (2 spacing^2) that atomsift computes from the offsets."""
    n = temps.numel()
    expected = torch.full_like(temps, 0.5 * (n - 1) ** 2)
    if n > 1 and not torch.allclose(temps.abs(), expected, rtol=1e-5):
        raise ConfigError(
            f"'{key}' holds learned Gaussian widths, which atomsift's GemNet-OC does not support",
            fix="use a checkpoint trained with learnable_rbf_stds=False (JMP-S / JMP-L)",
        )


def _check_widths(backbone: Mapping[str, Tensor], hp: Mapping[str, Any]) -> None:
    blocks = {int(m[1]) for k in backbone if (m := re.match(r"^int_blocks\.(\d+)\.", k))}
    checks = [
        ("atom_emb.embeddings.weight", (hp["num_elements"], hp["emb_size_atom"])),
        ("edge_emb.dense.linear.weight", (hp["emb_size_edge"], None)),
    ]
    for key, shape in checks:
        if key in backbone and any(s is not None and s != t for s, t in zip(shape, backbone[key].shape)):
            raise DataError(
                f"weight '{key}' has shape {tuple(backbone[key].shape)}, which does not fit the "
                "checkpoint's hyper_parameters",
                fix="check the file, or pass size='S' / 'L'",
            )
    if blocks and len(blocks) != hp["num_blocks"]:
        raise DataError(
            f"the weights have {len(blocks)} interaction blocks but the architecture {hp['num_blocks']}",
            fix="check the file, or pass size='S' / 'L'",
        )


def _split_heads(state: Mapping[str, Tensor], hyper: Mapping[str, Any]) -> tuple[dict, list[dict[str, Any]]]:
    """Per-dataset head weights {name: {"energy.<i>.weight": ..., "forces.<i>.weight": ...}} and task info."""
    indices = sorted({int(m[2]) for k in state if (m := re.match(r"^output\.out_(energy|forces)\.(\d+)\.", k))})
    names = [str(_as_dict(t).get("name", "")) for t in hyper.get("tasks") or []]
    if len(names) != len(indices):
        names = [m[1] for k in state if (m := re.match(r"^task_steps\..*?_typed_moduledict_(.+)\.value$", k))]
    if len(names) != len(indices):
        names = [f"task{i}" for i in indices]
    heads: dict[str, dict[str, Tensor]] = {}
    for i, name in zip(indices, names):
        heads[name] = {
            re.sub(rf"^output\.out_(energy|forces)\.{i}\.", r"\1.", k): v
            for k, v in state.items()
            if re.match(rf"^output\.out_(energy|forces)\.{i}\.", k)
        }
    tasks = []
    for t in hyper.get("tasks") or []:
        t = _as_dict(t)
        tasks.append(
            {
                "name": t.get("name"),
                "node_energy_reduction": t.get("node_energy_reduction", "sum"),
                "normalization": {k: _as_dict(v) for k, v in _as_dict(t.get("normalization")).items()},
            }
        )
    return heads, tasks


def atomsift_head_weights(head: Mapping[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A JMP head (``JmpWeights.heads[name]``) as atomsift EnergyHead weights: (HeadSpec dict, state_dict).

    JMP's head MLPs put a scaled SiLU (SiLU / 0.6) between linear layers; atomsift's use a plain SiLU, so
    every linear layer after the first is multiplied by 1 / 0.6 (the same function up to rounding).
    Keys: ``energy.<i>.*`` and ``force.edge_mlp.<i>.*``. Note: atomsift's EnergyHead builds its force MLP with
    the energy MLP's width, so the force weights fit it only when emb_size_edge == emb_size_atom.
    """
    out: dict[str, Tensor] = {}
    widths: dict[str, int] = {}
    for part, prefix in (("energy", "energy."), ("forces", "force.edge_mlp.")):
        layers = sorted({int(m[1]) for k in head if (m := re.match(rf"^{part}\.(\d+)\.weight$", k))})
        for j, idx in enumerate(layers):
            w = head[f"{part}.{idx}.weight"]
            out[f"{prefix}{idx}.weight"] = w * SILU_SCALE if j > 0 else w.clone()
            if f"{part}.{idx}.bias" in head:
                out[f"{prefix}{idx}.bias"] = head[f"{part}.{idx}.bias"].clone()
        if layers:
            widths[part] = int(head[f"{part}.{layers[0]}.weight"].shape[0])
            widths[f"{part}_layers"] = len(layers)
    spec = {
        "kind": "energy",
        "forces": "direct" if "forces" in widths else None,
        "hidden": widths.get("energy"),
        "num_layers": widths.get("energy_layers", 1),
        "bias": False,
        "reduce": "sum",
    }
    return spec, out


# --------------------------------------------------------------------------- building


def load_jmp_backbone(obj: Mapping[str, Any], *, source: str = "JMP checkpoint", ema: bool = True, **kwargs: Any):
    """Build atomsift's GemNetOC from a loaded JMP checkpoint; weights loaded non-strictly.

    Args:
        kwargs: passed to ``read_jmp_checkpoint`` (size, cutoff, max_neighbors, qint_tags).

    Returns:
        (backbone, JmpWeights, LoadReport): the report lists missing (scale factors included) and unexpected keys.

    Raises:
        DataError: a weight whose shape does not fit the architecture (naming it), besides read_jmp_checkpoint's.
    """
    from atomsift.models.backbones.gemnet_oc.model import GemNetOC
    from atomsift.models.checkpoint import LoadReport

    weights = read_jmp_checkpoint(obj, ema=ema, **kwargs)
    backbone = GemNetOC(**weights.hparams)
    expected = backbone.state_dict()
    for key, value in weights.backbone.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            raise DataError(
                f"weight '{atomsift_to_jmp_key(key)}' has shape {tuple(value.shape)} but the architecture needs "
                f"{tuple(expected[key].shape)}",
                file=source,
                fix="check the checkpoint's hyper_parameters['backbone']",
            )
    result = backbone.load_state_dict(weights.backbone, strict=False)
    report = LoadReport(
        source,
        list(result.missing_keys),
        list(result.unexpected_keys) + weights.unexpected,
        used_ema=weights.used_ema,
        notes=list(weights.notes),
    )
    return backbone, weights, report
