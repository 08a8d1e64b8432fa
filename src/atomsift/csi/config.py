"""CSI run configuration: a pydantic model that rejects unknown keys (YAML file and CLI flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from atomsift.data.spec import DatasetSpec, parse_dataset_arg
from atomsift.errors import ConfigError, did_you_mean
from atomsift.settings import Seed, load_yaml, resolve_settings

EXAMPLE = "configs/csi_demo.yaml"

__all__ = ["CSIConfig", "DatasetSpec", "load_config", "parse_dataset_arg"]


MECHANICS = ("batch_size", "device", "recompute", "cache_dir", "stats_memory_gb", "element_memory_gb")
"""CSI settings that change how the numbers are computed, not which: free to differ in a folder's rerun."""


class CSIConfig(BaseModel):
    """Settings of `atomsift csi` (defaults follow docs/method.md section 2)."""

    model_config = ConfigDict(extra="forbid")

    upstream: dict[str, DatasetSpec] = Field(default_factory=dict)
    downstream: dict[str, DatasetSpec] = Field(default_factory=dict)
    extractor: str = "sevenn"
    extractor_options: dict[str, Any] = Field(default_factory=dict)
    aggregation: Literal["flat", "mean", "sum", "max"] = "flat"
    n_samples: int = Field(10_000, ge=1, description="structures per dataset")
    upstream_sampling: Literal["balanced", "random"] = Field(
        "balanced", description="how upstream sets are sampled where their spec does not say (downstream: random)"
    )
    seed: Seed = 0
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
    measures: list[str] = Field(
        default_factory=lambda: ["all"],
        validate_default=True,
        description="alignment measures besides CSI (docs/measures.md), or all",
    )
    reservoir: int = Field(2000, ge=10, description="feature rows kept per dataset for the kNN and kernel measures")
    knn_k: int = Field(5, ge=1, description="k of the k-nearest-neighbour precision, recall and coverage")
    element_memory_gb: float = Field(
        2.0, gt=0, description="memory per dataset for per-element statistics (elements x d^2 float64)"
    )
    ood_ratio: float = Field(
        1.0, gt=0, description="out of distribution: nearest upstream CSI > ood_ratio x median upstream-upstream CSI"
    )
    device: str = "cpu"
    cache_dir: str | None = Field(None, description="default: OUT/cache")
    recompute: bool = False

    @field_validator("upstream", "downstream", mode="before")
    @classmethod
    def _dataset_mapping(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(
                f"must map dataset names to settings, got {type(value).__name__} (write it like  ani1x: {{path: ...}})"
            )
        return value

    @field_validator("measures", mode="before")
    @classmethod
    def _measure_names(cls, value: Any) -> Any:
        from atomsift.csi.measures import MEASURE_INFO

        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            return value
        unknown = [v for v in value if v != "all" and v not in MEASURE_INFO]
        if unknown:
            hint = did_you_mean(map(str, unknown), MEASURE_INFO).rstrip()
            raise ValueError(
                f"unknown measure(s) {', '.join(map(str, unknown))}; {hint + ' ' if hint else ''}known: all, "
                f"{', '.join(MEASURE_INFO)}"
            )
        names = list(MEASURE_INFO) if "all" in value else ["csi", *[v for v in value if v != "csi"]]
        return list(dict.fromkeys(names))

    @field_validator("shrinkage")
    @classmethod
    def _shrinkage_range(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ValueError("shrinkage weight must lie in [0, 1]")
        return value


def load_config(
    path: str | Path | None, flags: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> CSIConfig:
    """Settings from a YAML file (optional), then command-line flags, then `key=value` overrides.

    Flags whose value is None were not given. `flags["upstream"]` / `flags["downstream"]` ({name: DatasetSpec or
    dict}) add datasets to the file's (a name in both: the flag's entry wins); `flags["extractor_options"]` merges
    into the file's options key by key. Overrides use dotted keys: `upstream.acac.n_samples=50`.
    ConfigError naming the file and every bad or unknown key.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    file_data = load_yaml(path, EXAMPLE) if any(k in flags for k in ("upstream", "downstream")) else {}
    for key in ("upstream", "downstream"):
        given = flags.pop(key, None)
        if not given:
            continue
        existing = file_data.get(key) or {}
        if not isinstance(existing, dict):
            raise ConfigError(
                f"'{key}' must map dataset names to settings, got {type(existing).__name__}",
                file=path,
                fix=f"write it like  {key}:\n  ani1x: {{path: /data/ani1x.h5}}",
            )
        flags[key] = {**existing, **{name: _as_dict(spec) for name, spec in given.items()}}
    for key, value in dict(flags.pop("extractor_options", None) or {}).items():
        flags[f"extractor_options.{key}"] = value
    return resolve_settings(CSIConfig, path, flags=flags, overrides=overrides, example=EXAMPLE)


def _as_dict(spec: DatasetSpec | dict[str, Any]) -> dict[str, Any]:
    return spec.model_dump(exclude_defaults=True) if isinstance(spec, DatasetSpec) else dict(spec)
