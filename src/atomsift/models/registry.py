"""Backbone registry: a plain dict from name to "module:Class", imported only when a backbone is built.

from atomsift.models.registry import build_backbone
painn = build_backbone("painn", hidden=64)
gemnet = build_backbone("gemnet_oc", preset="S")
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from atomsift.errors import ConfigError, did_you_mean, shortlist
from atomsift.models.base import Backbone

BACKBONES: dict[str, str] = {
    "painn": "atomsift.models.backbones.painn:PaiNN",
    "gemnet_oc": "atomsift.models.backbones.gemnet_oc.model:GemNetOC",
}
"""name -> "module:Class" of a Backbone subclass."""

PRESET_TABLES: dict[str, str] = {
    "gemnet_oc": "atomsift.models.backbones.gemnet_oc.presets:PRESETS",
}
"""name -> "module:DICT" holding named hyperparameter sets (preset -> hparams)."""


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def canonical_name(name: str) -> str:
    """'GemNet-OC' -> 'gemnet_oc'; ConfigError listing the known names for an unknown one."""
    key = name.strip().lower().replace("-", "_")
    if key not in BACKBONES:
        raise ConfigError(
            f"unknown backbone '{name}'", fix=did_you_mean([key], BACKBONES) + f"use one of: {', '.join(BACKBONES)}"
        )
    return key


def backbone_class(name: str) -> type[Backbone]:
    """The Backbone subclass registered under `name`."""
    return _resolve(BACKBONES[canonical_name(name)])


def presets(name: str) -> dict[str, dict[str, Any]]:
    """Named hyperparameter sets of a backbone ({} when it has none)."""
    key = canonical_name(name)
    return dict(_resolve(PRESET_TABLES[key])) if key in PRESET_TABLES else {}


def build_backbone(name: str, preset: str | None = None, **hparams: Any) -> Backbone:
    """Build a backbone from a preset (optional) updated by keyword hyperparameters.

    Raises:
        ConfigError: unknown backbone, preset or hyperparameter (naming the accepted ones).
    """
    return backbone_class(name)(**backbone_settings(name, preset, hparams))


def backbone_settings(name: str, preset: str | None = None, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments ``build_backbone`` would pass (preset updated by hparams), checked, nothing built.

    Raises:
        ConfigError: unknown backbone, preset or hyperparameter (naming the accepted ones, and the nearest).
    """
    cls = backbone_class(name)
    settings: dict[str, Any] = {}
    if preset is not None:
        table = presets(name)
        if preset not in table:
            known = ", ".join(table) or "none"
            raise ConfigError(f"backbone '{name}' has no preset '{preset}'", fix=f"use one of: {known}")
        settings.update(table[preset])
    settings.update(hparams or {})
    signature = inspect.signature(cls.__init__)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    if not accepts_any:
        accepted = [n for n in signature.parameters if n != "self"]
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise ConfigError(
                f"unknown hyperparameter(s) for backbone '{name}': {', '.join(unknown)}",
                fix=did_you_mean(unknown, accepted) + f"its hyperparameters are: {', '.join(accepted)}",
            )
    required = [
        n
        for n, p in signature.parameters.items()
        if n != "self" and p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    missing = [n for n in required if n not in settings]
    if missing:  # GemNet-OC has no default size (it was a TypeError listing 19 names)
        table = ", ".join(presets(name)) or "none"
        raise ConfigError(
            f"backbone '{name}' needs a size: {len(missing)} hyperparameter(s) are not set ({shortlist(missing, 4)})",
            fix=f"choose a preset (one of: {table}; on the command line --preset NAME) or set them all",
        )
    return settings
