"""CSI run configuration: a pydantic model that rejects unknown keys (YAML file and CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from atomsift.data.spec import DatasetSpec, parse_dataset_arg
from atomsift.errors import ConfigError, validation_problems

__all__ = ["CSIConfig", "DatasetSpec", "load_config", "parse_dataset_arg"]


class CSIConfig(BaseModel):
    """Settings of `atomsift csi` (defaults follow docs/method.md section 2)."""

    model_config = ConfigDict(extra="forbid")

    upstream: dict[str, DatasetSpec] = Field(default_factory=dict)
    downstream: dict[str, DatasetSpec] = Field(default_factory=dict)
    extractor: str = "sevenn"
    extractor_options: dict[str, Any] = Field(default_factory=dict)
    aggregation: Literal["flat", "mean", "sum", "max"] = "flat"
    n_samples: int = Field(10_000, ge=1, description="structures per dataset")
    seed: int = 0
    bootstrap: int = Field(100, ge=0, description="bootstrap resamples for the intervals (0: off)")
    groups: int = Field(32, ge=2, description="random blocks of whole structures resampled by the bootstrap")
    confidence: float = Field(0.95, gt=0, lt=1)
    shrinkage: float | Literal["auto"] | None = Field(
        None, description="covariance shrinkage towards a scaled identity: a weight in [0, 1], 'auto', or none"
    )
    batch_size: int = Field(16, ge=1, description="structures per extractor call")
    stats_memory_gb: float = Field(
        4.0, gt=0, description="memory for all grouped statistics of the run (groups x d^2 float64 per dataset)"
    )
    device: str = "cpu"
    cache_dir: str | None = Field(None, description="default: OUT/cache")
    recompute: bool = False

    @field_validator("shrinkage")
    @classmethod
    def _shrinkage_range(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ValueError("shrinkage weight must lie in [0, 1]")
        return value


def load_config(path: Path | None, overrides: dict[str, Any]) -> CSIConfig:
    """Config from a YAML file (optional) with CLI overrides on top; ConfigError naming bad keys."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"cannot read the config file ({exc})", file=path, fix="check the path and YAML syntax"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError("the config file must hold a mapping", file=path, fix="see configs/csi_demo.yaml")
    for key in ("upstream", "downstream"):
        if data.get(key) is None:
            data.pop(key, None)
        elif not isinstance(data[key], dict):
            raise ConfigError(
                f"'{key}' must map dataset names to settings, got {type(data[key]).__name__}",
                file=path,
                fix=f"write it like  {key}:\n  ani1x: {{path: /data/ani1x.h5}}",
            )
    for key, value in overrides.items():
        if key in ("upstream", "downstream"):
            data.setdefault(key, {}).update(value)
        elif value is not None:
            data[key] = value
    try:
        return CSIConfig.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(
            f"invalid CSI settings ({problems})",
            file=path,
            fix="see configs/csi_demo.yaml for every key; unknown keys are rejected",
        ) from None
