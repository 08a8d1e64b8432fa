"""The Lightning Trainer of a run: resumable checkpoints, Ctrl-C, progress lines, merged metrics.

A run folder (its checks and reuse rules: run_folder.py) holds `config.yaml` (the resolved settings, written before work starts), `subsets/` (or
`split.json`), `checkpoints/last.ckpt` (Lightning's full training state, written atomically every
`checkpoint_every` optimizer steps, at the end and on Ctrl-C), `model.pt` (the best EMA weights as an
atomsift checkpoint), `last.pt` (the last EMA weights), `metrics.csv` and `summary.json`.
"""

from __future__ import annotations

import csv
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from atomsift.errors import ConfigError
from atomsift.train.config import Optimisation
from atomsift.train.run_folder import check_resumable, secondary_rank


class AtomicCheckpoint(Callback):
    """Writes checkpoints/last.ckpt every `every` optimizer steps, at each epoch's end, at the end of training
    and when interrupted (Ctrl-C outside an optimizer step).

    The first Ctrl-C lets the current step finish (and the epoch's validation, when it comes in the epoch's
    last step or its validation): the step's checkpoint is written where a periodic one would be, its logs
    are written, and the run stops before the next step. A resume then replays the logs too, not only the
    weights (a checkpoint written inside a step resumes the same weights, but Lightning's step counter and
    that step's log row came out one off). In DDP the processes agree after every step whether any of them
    was interrupted (one all-reduce of a flag), so all stop at the same step: a Ctrl-C that reached one
    process only (timeout, kill -INT) used to leave the others waiting in a collective for good. A second
    Ctrl-C stops at once."""

    def __init__(self, dirpath: Path, every: int) -> None:
        self.dirpath = Path(dirpath)
        self.every = every
        self.requested = False  # a first Ctrl-C came: stop at the next step boundary
        self._stop_next = False  # the checkpoint of the step boundary just passed is written: stop at the next
        self._saved_at_stop = False  # stopped there: that checkpoint is the resume point, write no other
        self._previous: Any = None
        self._pid = os.getpid()

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: L.Trainer) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.dirpath / ".last.ckpt.tmp"
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("atomic_checkpoint")

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.default_int_handler:  # not where SIGINT is ignored (background jobs) or taken
            self._previous, self._pid = previous, os.getpid()
            signal.signal(signal.SIGINT, self._on_ctrl_c)

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker inherited the handler: its parent decides
            return
        if self.requested:
            self._restore()
            raise KeyboardInterrupt
        self.requested = True
        if not secondary_rank():  # the terminal's stderr: an experiment sends sys.stderr to the job's log
            stream = sys.__stderr__ or sys.stderr
            print("\nCtrl-C: stopping after this step (Ctrl-C again to stop at once)", file=stream, flush=True)

    def _restore(self) -> None:
        # only while ours is in place: on an exception Lightning ignores SIGINT until it has shut down
        if self._previous is not None and signal.getsignal(signal.SIGINT) == self._on_ctrl_c:
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._stop_next:  # the step before was completed, logged and saved: stop here, before this one
            self._saved_at_stop = True
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # the epoch's last batch is saved at the epoch's end instead, after its validation: a checkpoint written
        # between the two would resume without that validation
        if batch_idx + 1 < trainer.num_training_batches:
            stop = self._agreed(trainer)
            if trainer.global_step % self.every == 0 or stop:
                self.save(trainer)
            self._stop_next = stop

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.save(trainer)
        self._stop_next = self._agreed(trainer)

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether any process was interrupted (every process calls this at the same points)."""
        if trainer.world_size == 1:
            return self.requested
        return bool(trainer.strategy.reduce_boolean_decision(self.requested, all=False))

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._restore()
        self.save(trainer)
        if self.requested:  # the Ctrl-C came in the last step or validation: no step boundary followed
            self._saved_at_stop = True
            raise KeyboardInterrupt  # the command stops here (no test evaluation, no further cells)

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        self._restore()
        stepping = getattr(pl_module, "_stepping", False)  # mid-update: the previous checkpoint stays
        if isinstance(exception, KeyboardInterrupt) and not stepping and not self._saved_at_stop:
            self.save(trainer)


def structures_per_second(pl_module: Any) -> float | None:
    """Structures trained per second in this attempt (from the module's counters, all processes)."""
    elapsed = time.perf_counter() - pl_module._fit_started
    done = pl_module.counters["structures"] - getattr(pl_module, "_structures_at_fit_start", 0.0)
    return done / elapsed if elapsed > 0 and done > 0 else None


class Progress(TQDMProgressBar):
    """Lightning's bar without the version number; shows the loss and structures/s."""

    def get_metrics(self, trainer: L.Trainer, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        rate = structures_per_second(pl_module)
        if rate is not None:
            items["struct/s"] = f"{rate:.0f}"
        return items


class EpochLines(Callback):
    """One line per epoch where no terminal shows a bar (logs, CI): losses, rate, remaining time."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.started = time.perf_counter()
        self.first_step = trainer.global_step

    def after_module_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Called by the module's on_train_epoch_end, once its epoch training loss is known."""
        if not trainer.is_global_zero:
            return
        m = dict(trainer.callback_metrics)
        if getattr(pl_module, "epoch_train_loss", None) is not None:
            m["train/loss_epoch"] = pl_module.epoch_train_loss
        done = trainer.global_step - self.first_step
        elapsed = time.perf_counter() - self.started
        left = (trainer.estimated_stepping_batches - trainer.global_step) * elapsed / max(done, 1)
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}", f"step {trainer.global_step}"]
        for key in ("train/loss_epoch", "val/loss"):
            if key in m:
                parts.append(f"{key.replace('_epoch', '')} {float(m[key]):.4g}")
        rate = structures_per_second(pl_module)
        if rate is not None:
            parts.append(f"{rate:.0f} structures/s")
        parts.append(f"about {left:.0f} s left")
        print(", ".join(parts), flush=True)


def precision_of(cfg: Optimisation) -> str:
    """Lightning's precision name; auto = 16-mixed on CUDA (the paper's mixed precision), 32 elsewhere."""
    if cfg.precision == "auto":
        gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
        return "16-mixed" if gpu else "32-true"
    return {"32": "32-true", "64": "64-true"}.get(cfg.precision, cfg.precision)


def _require_logger(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"loggers asks for {module}, which is not installed",
            fix=f"pip install {package} into this environment, or drop '{module}' from loggers (csv is always there)",
        )


def make_trainer(cfg: Optimisation, out: Path, attempt: int, *, progress: bool = True) -> L.Trainer:
    """The Lightning Trainer of a run (loggers write into RUN/logs/attempt_<k>)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = []
    for name in cfg.loggers:
        if name == "csv":
            loggers.append(CSVLogger(out / "logs", name="", version=f"attempt_{attempt}"))
        elif name == "tensorboard":
            _require_logger("tensorboard", "tensorboard")
            loggers.append(TensorBoardLogger(out / "logs", name="tensorboard", version=f"attempt_{attempt}"))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            _require_logger("wandb", "wandb")
            loggers.append(WandbLogger(save_dir=str(out / "logs"), name=out.name))
    callbacks: list[Callback] = [AtomicCheckpoint(out / "checkpoints", cfg.checkpoint_every)]
    bar = progress and sys.stdout.isatty()
    if bar:
        callbacks.append(Progress(leave=True))
    elif progress:
        callbacks.append(EpochLines())
    if "spawn" in str(cfg.strategy) or "fork" in str(cfg.strategy):
        raise ConfigError(
            f"strategy={cfg.strategy} starts its processes from a pickled copy of the run, which atomsift's run "
            "cannot be",
            fix="use strategy=ddp (one process per device, started as the command itself)",
        )
    cluster = ("SLURM_JOB_ID", "WORLD_SIZE", "MASTER_ADDR", "NODE_RANK", "TORCHELASTIC_RUN_ID")
    if cfg.num_nodes > 1 and not any(k in os.environ for k in cluster):
        raise ConfigError(
            f"num_nodes={cfg.num_nodes}, but this process was not started as one of several nodes (no SLURM or "
            "torchrun environment): it would wait for the other nodes for good",
            fix="start the command under SLURM (srun, one task per device) or torchrun on every node, or use "
            "num_nodes=1",
        )
    try:
        return _trainer(cfg, out, loggers, callbacks, bar)
    except (ValueError, TypeError, MisconfigurationException) as exc:  # devices, strategy, precision, cluster
        raise ConfigError(
            f"Lightning refused the run settings: {exc}",
            fix="check accelerator, devices, num_nodes, strategy and precision (and, under SLURM, that "
            "--ntasks-per-node equals devices)",
        ) from None


def _double_precision() -> Any:
    """Lightning's float64 precision plugin, converting an AtomsBatch with its own `to` (Lightning's generic
    conversion walks dataclasses and stops at the frozen graph settings inside a batch: precision 64 failed)."""
    from lightning.pytorch.plugins.precision.double import DoublePrecision

    from atomsift.graph.batch import AtomsBatch

    class AtomsDoublePrecision(DoublePrecision):
        def convert_input(self, data: Any) -> Any:
            return data.to(dtype=torch.float64) if isinstance(data, AtomsBatch) else super().convert_input(data)

    return AtomsDoublePrecision()


def _trainer(cfg: Optimisation, out: Path, loggers: list[Any], callbacks: list[Callback], bar: bool) -> L.Trainer:
    precision = precision_of(cfg)
    double = precision == "64-true"
    return L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=None if double else precision,
        plugins=[_double_precision()] if double else None,
        gradient_clip_val=cfg.grad_clip,
        gradient_clip_algorithm=cfg.grad_clip_algorithm,
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        inference_mode=False,
        log_every_n_steps=cfg.log_every,
        default_root_dir=str(out),
    )


def attempt_number(out: Path) -> int:
    logs = out / "logs"
    return len(list(logs.glob("attempt_*"))) if logs.is_dir() else 0


def merge_metrics(out: Path) -> Path | None:
    """RUN/metrics.csv from every attempt's CSV log; a step logged by a later attempt replaces the earlier row."""
    if secondary_rank():
        return None
    files = sorted((out / "logs").glob("attempt_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        return None
    rows: dict[tuple[str, str, tuple[str, ...]], dict[str, str]] = {}
    keys: set[str] = set()
    for f in files:
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                logged = tuple(sorted(k for k, v in row.items() if v not in ("", None)))  # which metrics this row has
                rows[(row.get("epoch", ""), row.get("step", ""), logged)] = row
                keys.update(row)
    path = out / "metrics.csv"
    tmp = path.with_name(".metrics.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=sorted(keys))  # Lightning's CSV order, whatever each attempt logged
        writer.writeheader()
        writer.writerows(sorted(rows.values(), key=lambda r: (float(r.get("step") or 0), r.get("epoch", ""))))
    os.replace(tmp, path)
    return path


def resume_point(out: Path) -> str:
    """'resuming RUN from its checkpoint: step S, epoch E (B batches in)' for the run's last.ckpt, read without
    its tensors (mmap)."""
    ckpt = Path(out) / "checkpoints" / "last.ckpt"
    try:  # the run's own file (atomsift wrote it): its loop state is pickled
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        loop = state["loops"]["fit_loop"]
        epoch = int(loop["epoch_progress"]["current"]["completed"]) + 1
        done = loop["epoch_loop.batch_progress"]["current"]["completed"]
        return (
            f"resuming {out} from its checkpoint: step {int(state['global_step'])}, epoch {epoch} ({done} batches in)"
        )
    except Exception:  # noqa: BLE001  (only a progress line: run_fit names a damaged checkpoint)
        return f"resuming {out} from its checkpoint"


def run_fit(module: Any, cfg: Optimisation, out: Path, *, state: str, progress: bool = True) -> dict[str, Any]:
    """Fit (or resume) and return timing; a Ctrl-C saves a checkpoint and re-raises KeyboardInterrupt."""
    attempt = attempt_number(out)
    trainer = make_trainer(cfg, out, attempt, progress=progress)
    ckpt = out / "checkpoints" / "last.ckpt"
    if state == "resume":
        check_resumable(out)
    start = time.perf_counter()
    try:
        trainer.fit(module, ckpt_path=str(ckpt) if state == "resume" else None)
    except SystemExit as exc:  # Lightning turns a Ctrl-C into exit(1) after its on_exception hooks
        if trainer.interrupted:
            raise KeyboardInterrupt from exc
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt
    merge_metrics(out)
    return {"trainer": trainer, "wall_time_s": time.perf_counter() - start}
