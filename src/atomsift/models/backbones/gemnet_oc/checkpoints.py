"""fairchem-core 1.10 and JMP checkpoint files -> an AtomsModel (GemNet-OC backbone + atomsift heads).

`atomsift.models.load_checkpoint` calls these after reading the file; they return (model, LoadReport).

* fairchem: the backbone takes every weight but `out_energy` / `out_forces`, which become one head "energy"
  (a single bias-free linear layer on atoms, summed (extensive) or averaged; direct forces as a bias-free
  linear layer on edges times the edge unit vectors, or gradient forces). Outputs are what fairchem's model
  outputs, in the units it was trained on (eV and eV/A for the public S2EF models).
* JMP: the backbone (embedding, bases, blocks, scale factors; EMA weights by default) and one head per
  pretraining dataset, named after it. JMP's heads predict *normalised* targets (energy minus a linear
  reference, divided by a per-dataset std); the report says so. A file without heads gets a fresh, randomly
  initialised "energy" head (also reported), ready for finetuning.
"""

from __future__ import annotations

from typing import Any

from atomsift.errors import ConfigError


def model_from_fairchem(obj: dict[str, Any], *, source: str):
    """AtomsModel from a fairchem-core 1.10 checkpoint dict {"config": {"model": ...}, "state_dict": ...}."""
    from atomsift.models.backbones.gemnet_oc.compat import gemnet_from_fairchem
    from atomsift.models.model import AtomsModel

    config = obj["config"]["model"]
    backbone, heads, report = gemnet_from_fairchem(config, obj["state_dict"])
    report.source = source
    if heads.forces_coupled:
        raise ConfigError(
            "this fairchem GemNet-OC uses forces_coupled=True, which atomsift's generic force head does not do",
            file=source,
            fix="use atomsift.models.backbones.gemnet_oc.compat.FairchemGemNetOC for this model",
        )
    forces = None if not heads.regress_forces else ("direct" if heads.direct_forces else "gradient")
    spec = {
        "kind": "energy",
        "forces": forces,
        "num_layers": 1,
        "bias": False,
        "reduce": "sum" if heads.extensive else "mean",
    }
    model = AtomsModel(backbone, {"energy": spec}, metadata={"source": source, "source_kind": "fairchem-core 1.10"})
    head_state = {"energy.0.weight": heads.out_energy.linear.weight.detach()}
    if forces == "direct":
        head_state["force.edge_mlp.0.weight"] = heads.out_forces.linear.weight.detach()
    result = model.heads["energy"].load_state_dict(head_state, strict=False)
    report.missing_keys += [
        f"heads.energy.{k}" for k in result.missing_keys if not _is_buffer(model.heads["energy"], k)
    ]
    return model, report


def _is_buffer(module: Any, key: str) -> bool:
    return key in dict(module.named_buffers())


def model_from_jmp(obj: dict[str, Any], *, source: str, ema: bool = True, **kwargs: Any):
    """AtomsModel from a JMP checkpoint dict (jmp-s.pt, jmp-l.pt, JMP pretraining files).

    Args:
        ema: use the EMA weights stored in the optimizer state (JMP's evaluation weights) when present.
        kwargs: passed to read_jmp_checkpoint (size, cutoff, max_neighbors, qint_tags).
    """
    from atomsift.models.backbones.gemnet_oc.jmp import atomsift_head_weights, load_jmp_backbone
    from atomsift.models.model import AtomsModel

    backbone, weights, report = load_jmp_backbone(obj, source=source, ema=ema, **kwargs)
    specs: dict[str, dict[str, Any]] = {}
    states: dict[str, dict[str, Any]] = {}
    for name, head in (weights.heads or {}).items():
        spec, state = atomsift_head_weights(head)
        force_keys = sorted(k for k in state if k.startswith("force.edge_mlp.") and k.endswith(".weight"))
        if force_keys:
            spec["force_hidden"] = int(state[force_keys[0]].shape[0])
        specs[name], states[name] = spec, state
    if not specs:
        specs["energy"] = {"kind": "energy", "forces": "direct" if backbone.direct_forces else "gradient"}
        report.notes.append("the file has no output heads: head 'energy' is freshly initialised (finetune it)")
    else:
        report.notes.append(
            f"heads {', '.join(specs)} predict JMP's normalised targets (energy minus a linear reference, divided by "
            "a per-dataset std), not eV"
        )
    model = AtomsModel(
        backbone,
        specs,
        metadata={
            "source": source,
            "source_kind": "JMP",
            "jmp_tasks": weights.tasks if hasattr(weights, "tasks") else None,
        },
    )
    for name, state in states.items():
        result = model.heads[name].load_state_dict(state, strict=False)
        head = model.heads[name]
        report.missing_keys += [f"heads.{name}.{k}" for k in result.missing_keys if not _is_buffer(head, k)]
        report.unexpected_keys += [f"heads.{name}.{k}" for k in result.unexpected_keys]
    return model, report
