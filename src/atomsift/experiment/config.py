"""Settings of `atomsift experiment`: a pydantic model that rejects unknown keys (docs/experiment.md).

upstream:   {NAME: dataset spec as in `csi` / `pretrain` (plus graph, energy_weight, force_weight, val_size)}
mixtures:   {NAME: {mixture: balanced | temperature, of: [UPSTREAM, ...], temperature: 2.0}}
downstream: {NAME: {path, format, options, preset, rank_on, <finetune keys over the preset>}}
budgets:    [{n_samples: N, epochs: E}, ...]
seeds:      [0, 1, 2]
scratch:    true                 # a from-scratch baseline per downstream task and seed
pretrain:   {<pretrain keys shared by every cell>}   (not upstream / mixture / n_samples / epochs / seed)
finetune:   {<finetune keys shared by every downstream task, under each task's own>}
csi:        {<csi keys>}         (not upstream / downstream)
launcher:   {name: local | slurm | submitit-local, ...}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from atomsift.data.spec import DatasetSpec
from atomsift.settings import Seed
from atomsift.train.config import UpstreamSpec, check_weights

PRETRAIN_OWN = ("upstream", "mixture", "temperature", "nominal_sizes", "weights", "n_samples", "epochs", "seed")
"""Pretraining keys the grid sets per cell (not allowed under `pretrain:`)."""

FINETUNE_OWN = ("data", "checkpoint", "from_scratch", "seed", "backbone")
"""Finetuning keys the grid sets per cell (not allowed under `finetune:` or a downstream task)."""

SCRATCH = "scratch"
"""The upstream name of the from-scratch baseline (reserved)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MixtureSpec(Strict):
    """A pretraining mixture of upstream datasets (shares as `atomsift pretrain` draws them)."""

    mixture: Literal["balanced", "temperature", "weights"] = "balanced"
    of: list[str] = Field(min_length=2, description="upstream names mixed")
    temperature: float = Field(2.0, gt=0)
    weights: dict[str, float] | None = Field(
        None, description="weights mixtures: structure shares per member (atomsift select writes them)"
    )
    nominal_sizes: dict[str, float] | None = Field(
        None, description="temperature mixtures: sizes the shares follow (default: the files' real sizes)"
    )

    @field_validator("of")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"lists an upstream twice: {value}")
        return value

    @model_validator(mode="after")
    def _weights(self) -> MixtureSpec:
        check_weights(self.mixture, self.weights, self.of)
        return self


class DownstreamSpec(Strict):
    """A downstream task: where the data is (`path`, `format`, `options`), the finetuning preset, and any
    finetuning key over the preset (`split`, `task`, `epochs`, `lr`, ...: validated when the grid is built).
    Reader options go under `options:` (here `split` is the train/val/test split of finetuning)."""

    model_config = ConfigDict(extra="allow")

    path: str
    format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    preset: str | None = None
    rank_on: str | None = Field(None, description="test metric ranked on (default: the preset's metric)")

    def data_spec(self) -> DatasetSpec:
        return DatasetSpec(path=self.path, format=self.format, options=self.options)

    def finetune_keys(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Budget(Strict):
    """One pretraining budget C = N x E."""

    n_samples: int = Field(ge=1)
    epochs: int = Field(ge=1)

    @property
    def label(self) -> str:
        return f"N{self.n_samples}_E{self.epochs}"


class Launcher(Strict):
    """Where cells run: here (`local`, one after another or in `jobs` processes), on SLURM through submitit
    (`slurm`), or through submitit's local executor (`submitit-local`, for testing the SLURM path)."""

    name: Literal["local", "slurm", "submitit-local"] = "local"
    jobs: int = Field(1, ge=1, description="local: cells run at once, each in its own process")
    partition: str | None = None
    time: int = Field(240, ge=1, description="minutes per cell (SLURM time limit)")
    gpus_per_task: int = Field(0, ge=0)
    cpus_per_task: int = Field(2, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = Field(64, ge=1, description="SLURM: array tasks running at once (per array)")
    max_array_size: int = Field(
        1000, ge=1, description="SLURM: tasks per job array (the cluster's MaxArraySize, 1001 by default, caps it)"
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="more submitit slurm_* parameters")


class ExperimentConfig(Strict):
    """`atomsift experiment`: the grid of upstream candidates x budgets x downstream tasks x seeds."""

    upstream: dict[str, UpstreamSpec]
    mixtures: dict[str, MixtureSpec] = Field(default_factory=dict)
    downstream: dict[str, DownstreamSpec]
    budgets: list[Budget]
    seeds: list[Seed] = Field(default_factory=lambda: [0])
    scratch: bool = Field(True, description="a from-scratch baseline per downstream task and seed")
    singles: bool = Field(True, description="pretrain on each upstream dataset alone (false: mixtures only)")
    pretrain: dict[str, Any] = Field(default_factory=dict)
    finetune: dict[str, Any] = Field(default_factory=dict)
    csi: dict[str, Any] = Field(default_factory=dict)
    launcher: Launcher = Field(default_factory=Launcher)
    # dotted keys the command line set -> what was typed (settings.given_keys): a bad key inside a section is
    # then blamed on the command line; not a setting (no YAML key, not in dumps or experiment.yaml)
    _given: dict[str, str] = PrivateAttr(default_factory=dict)

    def with_given(self, given: dict[str, str]) -> ExperimentConfig:
        """This config, remembering what the command line set (for error messages)."""
        self._given = dict(given)
        return self

    def given_within(self, renames: dict[str, str]) -> dict[str, str]:
        """The command line's keys under the prefixes of ``renames``, each prefix replaced by its value
        ({"pretrain.": ""}: "pretrain.lr" -> "lr", the key inside the pretraining settings)."""
        return {new + k[len(p) :]: v for k, v in self._given.items() for p, new in renames.items() if k.startswith(p)}

    @field_validator("upstream", "downstream", "mixtures", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"must map names to settings, got {type(value).__name__} (write it like  name: {{...}})")
        return value

    @field_validator("pretrain", "finetune", "csi", mode="before")
    @classmethod
    def _section(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("needs at least one seed")
        if len(set(value)) != len(value):
            raise ValueError(f"lists a seed twice: {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if not self.upstream and not self.scratch:
            raise ValueError("the grid is empty: give upstream datasets (or scratch: true)")
        if not self.downstream:
            raise ValueError("the grid is empty: give at least one downstream task")
        if not self.budgets and (self.upstream or self.mixtures):
            raise ValueError("give at least one budget: budgets: [{n_samples: N, epochs: E}]")
        for name in [*self.upstream, *self.mixtures, *self.downstream]:
            if name == SCRATCH or not name or name.startswith(".") or any(c in name for c in "/\\ "):
                raise ValueError(
                    f"'{name}' cannot be a name here (reserved, empty, starts with '.', or holds '/', '\\' or a space)"
                )
        plus = [n for n in self.upstream if "+" in n]
        if plus:
            raise ValueError(f"upstream names cannot hold '+' (it joins a mixture's members): {', '.join(plus)}")
        clash = sorted(set(self.upstream) & set(self.mixtures))
        if clash:
            raise ValueError(f"{', '.join(clash)}: a mixture and an upstream dataset share the name")
        for name, mix in self.mixtures.items():
            if mix.nominal_sizes is not None and set(mix.nominal_sizes) != set(mix.of):
                raise ValueError(f"mixture '{name}': nominal_sizes must give exactly the members {mix.of}")
            unknown = [m for m in mix.of if m not in self.upstream]
            if unknown:
                raise ValueError(
                    f"mixture '{name}' names {', '.join(unknown)}, which are not upstream datasets "
                    f"(upstream: {', '.join(self.upstream) or 'none'})"
                )
        labels = [b.label for b in self.budgets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"lists a budget twice: {labels}")
        for key in PRETRAIN_OWN:
            if key in self.pretrain:
                raise ValueError(f"pretrain.{key} is set per cell by the grid; remove it (see upstream/budgets/seeds)")
        for section, data in [("finetune", self.finetune)] + [
            (f"downstream.{n}", d.finetune_keys()) for n, d in self.downstream.items()
        ]:
            for key in FINETUNE_OWN:
                if key in data:
                    raise ValueError(f"{section}.{key} is set per cell by the grid; remove it")
        for key in ("upstream", "downstream"):
            if key in self.csi:
                raise ValueError(f"csi.{key}: CSI runs on the grid's own datasets; remove it")
        return self

    def candidates(self) -> list[str]:
        """Pretrained candidates in grid order: single datasets (if `singles`), then mixtures."""
        return [*(self.upstream if self.singles else []), *self.mixtures]
