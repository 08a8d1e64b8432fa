"""The grid of `atomsift experiment` as jobs: one pretraining per candidate, budget and seed, followed by its
finetuning on every downstream task; one from-scratch job per seed (docs/experiment.md, "Run folders").

    DIR/cells/pretrain/<candidate>/<N..._E...>/seed<S>/          an ordinary `atomsift pretrain` run folder
    DIR/cells/finetune/<task>/<candidate>/<N..._E...>/seed<S>/   an ordinary `atomsift finetune` run folder
    DIR/cells/finetune/<task>/scratch/seed<S>/                   the from-scratch baseline
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atomsift.errors import ConfigError
from atomsift.experiment.config import SCRATCH, Budget, ExperimentConfig
from atomsift.settings import deep_merge, validate
from atomsift.train.config import FinetuneConfig, PretrainConfig
from atomsift.train.finetune import load_preset, task_info
from atomsift.train.metrics import FORCES_MAE, target_metric_names
from atomsift.train.run_folder import flatten

EXAMPLE = "configs/experiment_demo.yaml"


@dataclass(frozen=True)
class FinetuneCell:
    """One finetuning: a downstream task from one pretrained candidate (or from scratch) and seed."""

    downstream: str
    candidate: str
    budget: Budget | None
    seed: int
    folder: Path
    settings: dict[str, Any]
    metric: str
    upstream: dict[str, Any] = field(default_factory=dict)
    """What the starting weights come from (the pretraining's settings digest): a finetuning whose pretraining
    changed is not reused."""


@dataclass(frozen=True)
class Job:
    """A unit of work for a launcher: an optional pretraining, then the finetunings that start from it."""

    name: str
    candidate: str
    kind: str
    members: tuple[str, ...]
    budget: Budget | None
    seed: int
    pretrain_folder: Path | None
    pretrain_settings: dict[str, Any] | None
    finetunes: list[FinetuneCell] = field(default_factory=list)


def rank_metric(cfg: FinetuneConfig, rank_on: str | None) -> str:
    """The test metric key a downstream task is ranked on (lower is better): `rank_on`, else the preset's."""
    if rank_on:
        return rank_on
    if cfg.task.metric == "forces_mae":
        return FORCES_MAE
    return target_metric_names(task_info(cfg, "task", cfg.task.target))["mae"]


def finetune_settings(exp: ExperimentConfig, name: str, **cell: Any) -> FinetuneConfig:
    """A downstream task's finetuning settings: preset < experiment `finetune` < the task's own keys < cell."""
    down = exp.downstream[name]
    data = deep_merge(load_preset(down.preset), exp.finetune)
    own = down.finetune_keys()
    mine = list(flatten(own))  # the task's own dotted keys: finetune.split.train loses to split: {train: ...}
    given = exp.given_within({"finetune.": ""})
    shadowed = sorted(k for k in given if any(o == k or o.startswith(k + ".") or k.startswith(o + ".") for o in mine))
    if shadowed:  # the documented order puts the task's keys last: say so rather than ignore the command line
        warnings.warn(
            f"{', '.join('finetune.' + k for k in shadowed)} from the command line does not apply to '{name}' "
            f"(or not wholly): its own {', '.join(shadowed)} in the config comes later; set "
            f"{', '.join(f'downstream.{name}.{k}=...' for k in shadowed)} instead",
            stacklevel=1,  # one place: Python's default filter says each task's once
        )
    data = deep_merge(data, own)
    data.update(data=down.data_spec().model_dump(mode="json", exclude_defaults=True), **cell)
    return validate(
        FinetuneConfig,
        data,
        within=f"the finetune section or downstream.{name} (with its preset)",
        example=EXAMPLE,
        given=exp.given_within({"finetune.": "", f"downstream.{name}.": ""}),
    )


def pretrain_settings(exp: ExperimentConfig, candidate: str, budget: Budget, seed: int) -> PretrainConfig:
    """A candidate's pretraining settings: the experiment's `pretrain` section plus the cell's data and budget."""
    if candidate in exp.mixtures:
        mix = exp.mixtures[candidate]
        data: dict[str, Any] = {
            "upstream": {m: exp.upstream[m].model_dump(mode="json", exclude_defaults=True) for m in mix.of},
            "mixture": mix.mixture,
            "temperature": mix.temperature,
            "nominal_sizes": mix.nominal_sizes,
            "weights": mix.weights,
        }
    else:
        data = {
            "upstream": {candidate: exp.upstream[candidate].model_dump(mode="json", exclude_defaults=True)},
            "mixture": "single",
        }
    data.update(exp.pretrain, n_samples=budget.n_samples, epochs=budget.epochs, seed=seed)
    return validate(
        PretrainConfig,
        data,
        within=f"the pretrain section or upstream (pretraining of '{candidate}')",
        example=EXAMPLE,
        given=exp.given_within({"pretrain.": "", f"mixtures.{candidate}.": "", "upstream.": "upstream."}),
    )


LATER_KEYS: dict[str, Any] = {"weights": None}
"""Settings added after experiments were run, left out of the digest at their default so those folders still match."""


def settings_digest(settings: dict[str, Any] | None) -> str:
    """sha256 (16 hex) of settings, with the run mechanics that do not change results left out."""
    from atomsift.train.run_folder import MECHANICS

    kept = {
        k: v for k, v in (settings or {}).items() if k not in MECHANICS and not (k in LATER_KEYS and v == LATER_KEYS[k])
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _architecture(backbone: dict[str, Any]) -> dict[str, Any]:
    """The scratch baseline's architecture keys: a new backbone's spec, or the checkpoint pretraining starts from
    (its architecture only: from_scratch re-initialises the weights)."""
    if backbone.get("checkpoint"):
        return {"checkpoint": backbone["checkpoint"], "trust_checkpoint": bool(backbone.get("trust_checkpoint"))}
    return {"backbone": backbone}


def _members(exp: ExperimentConfig, candidate: str) -> tuple[str, ...]:
    return tuple(exp.mixtures[candidate].of) if candidate in exp.mixtures else (candidate,)


def build_jobs(exp: ExperimentConfig, out: Path) -> list[Job]:
    """Every job of the grid in a fixed order (candidates x budgets x seeds, then scratch per seed)."""
    out = Path(out).resolve()
    jobs: list[Job] = []
    backbone = exp.pretrain.get("backbone")
    if exp.scratch and backbone is None:
        raise ConfigError(
            "the from-scratch baseline needs the architecture: pretrain.backbone",
            fix="give pretrain: {backbone: {name: painn, ...}} (every cell shares it)",
        )
    for candidate in exp.candidates():
        for budget in exp.budgets:
            for seed in exp.seeds:
                pre = pretrain_settings(exp, candidate, budget, seed)
                folder = out / "cells" / "pretrain" / candidate / budget.label / f"seed{seed}"
                job = Job(
                    f"{candidate}/{budget.label}/seed{seed}",
                    candidate,
                    "mixture" if candidate in exp.mixtures else "dataset",
                    _members(exp, candidate),
                    budget,
                    seed,
                    folder,
                    pre.model_dump(mode="json"),
                )
                source = {"pretraining": job.name, "settings_sha256": settings_digest(job.pretrain_settings)}
                for task in exp.downstream:
                    ft = finetune_settings(exp, task, checkpoint=str(folder / "model.pt"), seed=seed)
                    job.finetunes.append(
                        FinetuneCell(
                            task,
                            candidate,
                            budget,
                            seed,
                            out / "cells" / "finetune" / task / candidate / budget.label / f"seed{seed}",
                            ft.model_dump(mode="json"),
                            rank_metric(ft, exp.downstream[task].rank_on),
                            source,
                        )
                    )
                jobs.append(job)
    if exp.scratch:
        for seed in exp.seeds:
            job = Job(f"{SCRATCH}/seed{seed}", SCRATCH, SCRATCH, (), None, seed, None, None)
            for task in exp.downstream:
                ft = finetune_settings(exp, task, from_scratch=True, seed=seed, **_architecture(backbone))
                job.finetunes.append(
                    FinetuneCell(
                        task,
                        SCRATCH,
                        None,
                        seed,
                        out / "cells" / "finetune" / task / SCRATCH / f"seed{seed}",
                        ft.model_dump(mode="json"),
                        rank_metric(ft, exp.downstream[task].rank_on),
                    )
                )
            jobs.append(job)
    if not jobs:
        raise ConfigError("the grid is empty", fix="give upstream datasets and budgets, or scratch: true")
    return jobs
