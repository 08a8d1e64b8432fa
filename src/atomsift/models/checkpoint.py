"""Saving and loading models: atomsift checkpoints, fairchem-core 1.10 GemNet-OC files and JMP checkpoints.

    save_checkpoint(model, "runs/x/model.pt", ema_state_dict=ema)     # atomic write
    model = load_checkpoint("runs/x/model.pt")                        # EMA weights when the file has them
    model = load_checkpoint("jmp-s.pt")                               # JMP (Lightning) checkpoint
    model = load_checkpoint("gemnet_oc_base_s2ef_all.pt")             # fairchem-core 1.10 checkpoint

An atomsift checkpoint is a dict: {"format": "atomsift.model", "format_version": 1, "atomsift_version",
"backbone": {"name", "hparams"}, "heads": {name: HeadSpec dict}, "state_dict" (keys "backbone.*", "heads.*",
scale factors included), "ema_state_dict" (optional, same keys), "metadata"}. Only tensors, numbers, strings,
lists and dicts: it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atomsift.errors import ConfigError, DataError, shortlist
from atomsift.settings import atomic_path

FORMAT = "atomsift.model"
FORMAT_VERSION = 1


@dataclass
class LoadReport:
    """What happened when weights were loaded (atomsift, fairchem and JMP files alike).

    Attributes:
        source: where the weights came from (a path, or a description).
        missing_keys: model parameters / buffers the weights lacked.
        unexpected_keys: weights the model has no place for.
        used_ema: the weights are exponential-moving-average weights.
        notes: anything else the user should know, one sentence each.
        unfitted_scale_factors: GemNet-OC scale factors left without a value (they act as identity).
        ignored_config_keys: config keys accepted without effect (fairchem files).
        trained: False when the file says its weights were never trained (written by `atomsift model init`),
            True when it says they were, None when it does not say (JMP, fairchem and converted files).
        mismatched_keys: weights whose shape differs from the model's (the file's architecture is not the one
            its config describes); they are not loaded.
    """

    source: str = ""
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    used_ema: bool = False
    notes: list[str] = field(default_factory=list)
    unfitted_scale_factors: list[str] = field(default_factory=list)
    ignored_config_keys: list[str] = field(default_factory=list)
    trained: bool | None = None
    mismatched_keys: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No missing, unexpected or mismatched keys (unfitted scale factors are listed, not counted)."""
        return not self.missing_keys and not self.unexpected_keys and not self.mismatched_keys

    def summary(self) -> str:
        """One paragraph for logs and the CLI."""
        parts = [f"loaded {self.source} ({'EMA' if self.used_ema else 'raw'} weights)"]
        if self.missing_keys:
            parts.append(f"{len(self.missing_keys)} missing key(s): {shortlist(self.missing_keys)}")
        if self.unexpected_keys:
            parts.append(f"{len(self.unexpected_keys)} unexpected key(s): {shortlist(self.unexpected_keys)}")
        if self.mismatched_keys:
            parts.append(
                f"{len(self.mismatched_keys)} key(s) of another shape, not loaded: {shortlist(self.mismatched_keys, 2)}"
            )
        if self.unfitted_scale_factors:
            parts.append(
                f"{len(self.unfitted_scale_factors)} unfitted scale factor(s): {shortlist(self.unfitted_scale_factors, 3)}"
            )
        if self.trained is False:
            parts.append("the weights were never trained (random initialisation)")
        parts.extend(self.notes)
        return "; ".join(parts)

    def raise_if(self, strict: bool = True) -> None:
        """With `strict`, raise ConfigError when a weight is missing or unexpected."""
        if strict and not self.clean:
            raise ConfigError(
                f"the weights do not match the model: {len(self.missing_keys)} missing ({shortlist(self.missing_keys)}), "
                f"{len(self.unexpected_keys)} unexpected ({shortlist(self.unexpected_keys)})",
                fix="check that the checkpoint's config matches its weights, or load with strict=False",
            )


def save_checkpoint(
    model,
    path: str | os.PathLike,
    *,
    ema_state_dict: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (an AtomsModel) as an atomsift checkpoint, atomically (temporary file + rename)."""
    from atomsift import __version__

    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "atomsift_version": __version__,
        "backbone": {"name": model.backbone.name, "hparams": model.backbone.hparams()},
        "heads": {name: spec.model_dump() for name, spec in model.head_specs.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": {**model.metadata, **(metadata or {})},
    }
    if ema_state_dict is not None:
        payload["ema_state_dict"] = {k: v.detach().cpu() for k, v in ema_state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """The path as a Path if it is a file; a clear error for a folder (naming the checkpoints in it) or nothing."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))
        hint = (
            f"give the checkpoint inside it: {path / 'model.pt'}"
            if "model.pt" in inside
            else f"give one of the checkpoints inside it: {', '.join(inside[:3])}"
            if inside
            else "give the path of a checkpoint file (.pt); this folder holds none"
        )
        raise ConfigError("the path is a folder, not a checkpoint file", file=path, fix=hint)
    if not path.is_file():
        raise DataError("checkpoint file not found", file=path, fix="check the path")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (PK..), older torch a pickle (\x80); a text file (a run's summary.json,
    # config.yaml) is the common mistake
    if head[:2] != b"PK" and head[:1] != b"\x80":
        kind = "a JSON file, not a checkpoint" if head.lstrip()[:1] in (b"{", b"[") else "not a PyTorch checkpoint"
        raise DataError(
            f"the file is {kind} (a checkpoint is a zip archive written by torch.save)",
            file=path,
            fix="give a run's model.pt (or last.pt), a JMP .pt or a fairchem-core checkpoint",
        )
    return path


def read_checkpoint_file(path: str | os.PathLike, *, trusted: bool = False) -> dict[str, Any]:
    """torch.load a checkpoint onto the CPU, with clear errors for missing, truncated or foreign files.

    Args:
        trusted: allow arbitrary pickled Python objects (fairchem / Lightning files may hold some). Only for
            files from a source you trust: unpickling can run code.
    """
    path = check_checkpoint_path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for these cases
        text = str(exc)
        if not trusted and "Unsupported global" in text:
            found = text.split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in text else "a Python class"
            raise ConfigError(
                f"the checkpoint holds Python objects besides tensors ({found}), which are not loaded by default "
                "because unpickling can run code",
                file=path,
                fix="if you trust the file's source, load it with trusted=True (CLI: --trust-checkpoint)",
            ) from None
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if text else ""
        raise DataError(
            f"cannot read the checkpoint ({type(exc).__name__}: {detail[:200]}); the file may be truncated or not a "
            "PyTorch checkpoint",
            file=path,
            fix="re-download or re-save the checkpoint",
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"the checkpoint holds a {type(obj).__name__}, not a dict of weights",
            file=path,
            fix="save models with atomsift.models.save_checkpoint",
        )
    return obj


def checkpoint_kind(obj: dict[str, Any]) -> str:
    """'atomsift', 'fairchem' or 'jmp' for a loaded checkpoint dict; 'unknown' otherwise."""
    if obj.get("format") == FORMAT:
        return "atomsift"
    state = obj.get("state_dict")
    if isinstance(obj.get("config"), dict) and isinstance(obj["config"].get("model"), dict) and isinstance(state, dict):
        return "fairchem"
    if (
        isinstance(state, dict)
        and any(k.startswith("backbone.") for k in state)
        and any(k.startswith("embedding.atom_embedding.") for k in state)
    ):
        return "jmp"
    return "unknown"


def load_checkpoint(
    path: str | os.PathLike,
    *,
    ema: bool = True,
    device: str | torch.device = "cpu",
    trusted: bool = False,
    strict: bool = True,
):
    """Load an atomsift, fairchem-core 1.10 (GemNet-OC) or JMP checkpoint as an AtomsModel in eval mode.

    Args:
        ema: use the exponential-moving-average weights when the file has them (the weights to evaluate).
        device: where to put the model.
        trusted: allow pickled Python objects in the file (see read_checkpoint_file).
        strict: raise when keys are missing or unexpected (the report is on `model.load_report` either way).

    Returns:
        AtomsModel with `.load_report` (a LoadReport).
    """
    from atomsift.device import check_device

    device = check_device(device)
    path = Path(path)
    obj = read_checkpoint_file(path, trusted=trusted)
    kind = checkpoint_kind(obj)
    if kind == "atomsift":
        model, report = _from_atomsift(obj, path, ema=ema)
    elif kind == "fairchem":
        from atomsift.models.backbones.gemnet_oc.checkpoints import model_from_fairchem

        model, report = model_from_fairchem(obj, source=str(path))
    elif kind == "jmp":
        from atomsift.models.backbones.gemnet_oc.checkpoints import model_from_jmp

        model, report = model_from_jmp(obj, source=str(path), ema=ema)
    elif isinstance(obj, dict) and "pytorch-lightning_version" in obj:
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        raise DataError(
            "this is a Lightning training checkpoint (the state --resume continues from), not a model",
            file=path,
            fix=f"use the run's model: {run / 'model.pt'} (best weights) or {run / 'last.pt'} (the last epoch's)",
        )
    else:
        raise DataError(
            f"unrecognised checkpoint layout (top-level keys: {shortlist(sorted(map(str, obj)), 8)})",
            file=path,
            fix="atomsift reads its own checkpoints, fairchem-core 1.10 checkpoints ({'config': {'model': ...}, "
            "'state_dict': ...}) and JMP checkpoints ('state_dict' with backbone.* and embedding.* keys)",
        )
    if strict and not report.clean:
        raise DataError(
            f"the weights do not fit the model: {report.summary()}",
            file=path,
            fix="pass strict=False to load what fits (the report lists the rest)",
        )
    model.load_report = report
    return model.to(device).eval()


def _from_atomsift(obj: dict[str, Any], path: Path, *, ema: bool):
    from atomsift.models.model import AtomsModel
    from atomsift.models.registry import build_backbone

    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"checkpoint format version {version} is not supported (this atomsift reads {FORMAT_VERSION})",
            file=path,
            fix="upgrade atomsift, or re-save the model with this version",
        )
    try:
        spec = obj["backbone"]
        backbone = build_backbone(spec["name"], **spec["hparams"])
        model = AtomsModel(backbone, obj["heads"], metadata=obj.get("metadata"))
    except KeyError as exc:
        raise DataError(f"checkpoint lacks the key {exc}", file=path, fix="re-save the model") from None
    state = obj["state_dict"]
    used_ema = bool(ema and obj.get("ema_state_dict"))
    if used_ema:
        state = obj["ema_state_dict"]
    elif (obj.get("metadata") or {}).get("weights") == "ema":  # training writes its EMA weights as the weights
        used_ema = True
    own = model.state_dict()
    mismatched = sorted(k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    result = model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    missing = [k for k in result.missing_keys if k not in mismatched]
    report = LoadReport(str(path), missing, list(result.unexpected_keys), used_ema=used_ema)
    report.mismatched_keys = [
        f"{k} ({tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model)" for k in mismatched
    ]
    report.unfitted_scale_factors = _unfitted_scale_factors(model.backbone)
    report.trained = weights_trained(model.metadata)
    return model, report


def weights_trained(metadata: dict[str, Any]) -> bool | None:
    """Whether a checkpoint's metadata says its weights were trained; None when it does not say.

    `atomsift model init` writes {"trained": false}; training sets it true. Files written by `model init`
    before that key existed count as untrained.
    """
    value = metadata.get("trained")
    if isinstance(value, bool):
        return value
    if metadata.get("created_by") == "atomsift model init":
        return False
    return None


def _unfitted_scale_factors(backbone) -> list[str]:
    """Module paths of a backbone's GemNet-OC scale factors that have no value (they act as identity)."""
    from atomsift.models.backbones.gemnet_oc.scaling import unfitted_scale_factors

    return sorted(unfitted_scale_factors(backbone))
