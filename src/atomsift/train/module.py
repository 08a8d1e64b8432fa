"""The LightningModule of pretraining and finetuning: one backbone pass per batch, each head on its own tasks.

Everything random in a step is a function of (seed, step): the batch order (BudgetBatchSampler) and the edge
dropout (a generator seeded per step), so a resumed run replays exactly what an uninterrupted run does. The
EMA weights (torch.optim.swa_utils.AveragedModel) are updated after every optimizer step and are the ones
validated and saved. Checkpoints carry the EMA weights, the step counters, the position in the epoch and the
best validation value next to Lightning's own state.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from atomsift.errors import AtomsiftError, DataError
from atomsift.train.config import Optimisation
from atomsift.train.data import BatchCollator, BudgetBatchSampler, TrainSet
from atomsift.train.losses import ERROR_KEYS, TaskInfo, error_sums, structure_losses
from atomsift.train.metrics import metrics_from_sums
from atomsift.train.optimizer import fused_adamw
from atomsift.train.schedule import WarmupCosinePlateau, warmup_problem


class TrainingDiverged(AtomsiftError):
    """The loss became NaN or infinite."""


class TrainModule(L.LightningModule):
    """Trains `model` (an AtomsModel) on `tasks`.

    Args:
        model: backbone + one head per task (heads named by TaskInfo.head).
        tasks: the tasks, in the order of the batches' dataset indices.
        cfg: optimisation settings.
        train_set, val_set: TrainSets of the training subsets and the validation structures.
        collator: builds batches.
        param_groups: [{"params": [...], "lr_scale": s, "name": ...}, ...] (layer-wise learning rates).
        monitor: the validation quantity that picks the best weights ("val/loss" or "val/<task>/<metric>").
        on_best: called with (module, epoch, value) when validation improves (writes the best model).
        edge_dropout: GemNet-OC edge dropout during training.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tasks: list[TaskInfo],
        cfg: Optimisation,
        *,
        train_set: TrainSet,
        val_set: TrainSet,
        collator: BatchCollator,
        param_groups: list[dict[str, Any]],
        monitor: str = "val/loss",
        on_best: Callable[[TrainModule, int, float], None] | None = None,
        edge_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.tasks = tasks
        self.cfg = cfg
        self.train_set, self.val_set, self.collator = train_set, val_set, collator
        self._param_groups = param_groups
        self.monitor = monitor
        self.on_best = on_best
        self.edge_dropout = edge_dropout
        ema = None
        if cfg.ema_decay is not None:
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        object.__setattr__(self, "ema", ema)  # not a submodule: the optimizer and DDP must not see it
        self.counters = {"structures": 0.0, "atoms": 0.0, **{f"structures/{t.name}": 0.0 for t in tasks}}
        self.batches_in_epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None  # Lightning's epoch index (0-based); reports add 1
        self.history: list[dict[str, float]] = []
        self._resume_skip = 0
        self._resume_epoch = -1
        self._val: dict[str, dict[str, torch.Tensor]] = {}
        self._epoch_loss = torch.zeros((), dtype=torch.float64)
        self.epoch_train_loss: float | None = None  # the last finished epoch's mean training loss
        self._epoch_structures_at_start = 0.0
        self._structures_at_fit_start = 0.0
        self._pending = torch.zeros(2 + len(tasks), dtype=torch.float64)
        self._stepping = False  # inside optimizer_step: an interrupt now must not write a checkpoint
        self.wall_before = 0.0  # seconds of training in earlier attempts of this run
        self._fit_started = time.perf_counter()

    # ------------------------------------------------------------------ data

    def _rank(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: TrainSet, sampler: BudgetBatchSampler) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.collator,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world = self._rank()
        sampler = BudgetBatchSampler(self.train_set, self.cfg.batch_size, self.cfg.seed, rank, world)
        sampler.set_epoch(self.current_epoch)
        sampler.skip, sampler.skip_epoch, self._resume_skip = self._resume_skip, self._resume_epoch, 0
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world = self._rank()
        sampler = BudgetBatchSampler(self.val_set, self.cfg.batch_size, self.cfg.seed, rank, world, shuffle=False)
        return self._loader(self.val_set, sampler)

    # ------------------------------------------------------------------ optimisation

    def _fused_adamw(self, groups: list[dict[str, Any]]) -> bool | None:
        precision = str(getattr(self._trainer, "precision", "32-true")) if self._trainer is not None else "32-true"
        return fused_adamw([p for g in groups for p in g["params"]], precision)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.cfg
        groups = [{"params": g["params"], "lr": cfg.lr * g["lr_scale"], "name": g["name"]} for g in self._param_groups]
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=self._fused_adamw(groups)
        )
        rank, world = self._rank()
        steps_per_epoch = -(-len(self.train_set) // (cfg.batch_size * world))
        cosine = (cfg.cosine_epochs or cfg.epochs) * steps_per_epoch
        problem = warmup_problem(cfg.warmup_steps, cfg.epochs * steps_per_epoch, cfg.warmup_start_factor)
        if problem and rank == 0:
            warnings.warn(problem, stacklevel=2)
        # a scaled group's floor is the same absolute learning rate (min_lr_factor x lr), clamped to 1-99 %
        floors = [
            cfg.min_lr_factor if g["lr_scale"] == 1 else min(max(cfg.min_lr_factor / g["lr_scale"], 0.01), 0.99)
            for g in self._param_groups
        ]
        scheduler = WarmupCosinePlateau(
            optimizer,
            warmup_steps=cfg.warmup_steps,
            start_factor=cfg.warmup_start_factor,
            cosine_steps=max(1, int(round(cosine)) - cfg.warmup_steps),
            min_factors=floors,
            plateau_factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        def closure() -> Any:
            result = optimizer_closure()  # training_step and backward: nothing has changed yet
            self._stepping = True  # from here until the counters are committed, an interrupt saves nothing
            return result

        super().optimizer_step(epoch, batch_idx, optimizer, closure)
        if self.ema is not None:  # after the step, before any checkpoint of this step is written
            self.ema.update_parameters(self.model)
        optimizer.zero_grad(set_to_none=True)  # free the gradients now, not after the next forward pass
        self._commit_counts()
        self.batches_in_epoch += 1
        self._stepping = False

    def _commit_counts(self) -> None:
        """Add the step's structure and atom counts, summed over all processes (so every rank holds the totals
        and any rank's checkpoint has them)."""
        counts = self._pending
        if self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum").cpu()
        values = counts.tolist()
        self.counters["structures"] += values[0]
        self.counters["atoms"] += values[1]
        for t, v in zip(self.tasks, values[2:], strict=True):
            self.counters[f"structures/{t.name}"] += v

    # ------------------------------------------------------------------ steps

    def _heads(self, batch) -> dict[str, torch.Tensor]:
        return {t.head: batch.dataset == k for k, t in enumerate(self.tasks)}

    def _losses(self, net: torch.nn.Module, outs: dict[str, dict[str, torch.Tensor]], batch) -> torch.Tensor:
        per = batch.positions.new_zeros(batch.num_structures)
        for k, t in enumerate(self.tasks):
            head = net.heads[t.head]
            force_scale = getattr(head, "force_scale", head.scale.new_ones(()))
            loss = structure_losses(outs[t.head], batch, t, head.scale.reshape(-1)[0], force_scale)
            per = per + torch.where(batch.dataset == k, loss, torch.zeros_like(loss))
        return per

    @contextlib.contextmanager
    def _naming_file(self, batch: Any) -> Iterator[None]:
        """A data error of one structure (atoms on top of each other, found by the model) gets the file of that
        structure's dataset: the model knows the record's id only."""
        try:
            yield
        except DataError as exc:
            # ids are unique within a dataset only: name the file where one dataset of the batch has that id
            owners = {int(batch.dataset[i]) for i, rid in enumerate(batch.ids) if rid == exc.record}
            if exc.file is None and len(owners) == 1:
                exc.amend(file=getattr(self.train_set.tasks[owners.pop()].dataset, "path", None))
            raise

    def _seed_edge_dropout(self) -> None:
        backbone = self.model.backbone
        if self.edge_dropout > 0 and hasattr(backbone, "edge_dropout"):
            backbone.edge_dropout = self.edge_dropout
            seed = np.random.SeedSequence([self.cfg.seed, self.global_step]).generate_state(1)[0]
            backbone.edge_dropout_generator = torch.Generator().manual_seed(int(seed))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self._seed_edge_dropout()
        with self._naming_file(batch):
            outs = self.model.forward_heads(batch, self._heads(batch), create_graph=True)
        per = self._losses(self.model, outs, batch)
        weights = batch.weights.to(per.dtype)
        loss = (weights * per).sum() * self.trainer.world_size / batch.step_size
        if not bool(torch.isfinite(loss)):
            shown = ", ".join(batch.ids[:8]) + (" ..." if len(batch.ids) > 8 else "")
            raise TrainingDiverged(
                f"the training loss became {float(loss)} at optimizer step {self.global_step} (epoch "
                f"{self.current_epoch}); structures of that batch: {shown}",
                fix="check those structures' labels, lower lr, or keep grad_clip on; the last checkpoint in "
                "checkpoints/ holds the weights before this step",
            )
        real = weights > 0
        counts = [real.sum(), batch.natoms[real].sum()] + [
            (real & (batch.dataset == k)).sum() for k in range(len(self.tasks))
        ]
        self._pending = torch.stack(counts).to(torch.float64)  # committed when the optimizer step is done
        # this process's share of the epoch's loss sum (on the step's device: no host sync per step)
        self._epoch_loss = self._epoch_loss.to(per.device) + (weights * per).detach().sum().double()
        if (self.global_step + 1) % self.cfg.log_every == 0:  # when Lightning writes its logs (log_every_n_steps)
            # the step's mean loss over all processes' structures (each process holds its share of the sum)
            self.log(
                "train/loss_step",
                loss.detach(),
                prog_bar=True,
                sync_dist=self.trainer.world_size > 1,
                reduce_fx="mean",
                batch_size=batch.step_size,
            )
        return loss

    def on_train_epoch_start(self) -> None:
        self.batches_in_epoch = 0
        self._epoch_loss = torch.zeros((), dtype=torch.float64)
        self._epoch_structures_at_start = self.counters["structures"]

    def on_train_epoch_end(self) -> None:
        """The epoch's mean training loss over every structure it trained (all processes)."""
        total = self._epoch_loss.to(self.device)
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        n = self.counters["structures"] - self._epoch_structures_at_start
        self.epoch_train_loss = float(total) / n if n > 0 else None
        if self.epoch_train_loss is not None:
            self.log("train/loss_epoch", self.epoch_train_loss, rank_zero_only=True)
        # Lightning calls callbacks' on_train_epoch_end before this hook: the per-epoch line is printed from here,
        # or it would show the previous epoch's training loss
        for callback in self.trainer.callbacks:
            if hasattr(callback, "after_module_epoch_end"):
                callback.after_module_epoch_end(self.trainer, self)

    # ------------------------------------------------------------------ validation (EMA weights)

    def _validation_due(self) -> bool:
        last = self.current_epoch + 1 >= self.cfg.epochs
        return last or (self.current_epoch + 1) % self.cfg.val_every == 0

    def on_validation_epoch_start(self) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val = {t.name: {k: zero.clone() for k in (*ERROR_KEYS, "loss", "structures")} for t in self.tasks}

    def validation_step(self, batch, batch_idx: int) -> None:
        if not self._validation_due():
            return
        net = self.ema.module if self.ema is not None else self.model
        was = net.training
        net.eval()
        try:
            with self._naming_file(batch):
                outs = net.forward_heads(batch, self._heads(batch), create_graph=False)
            per = self._losses(net, outs, batch).detach()
        finally:
            net.train(was)
        real = batch.weights > 0
        for k, t in enumerate(self.tasks):
            rows = real & (batch.dataset == k)
            sums = error_sums(outs[t.head], batch, t, rows)
            acc = self._val[t.name]
            for key, value in sums.items():
                acc[key] += value.double()
            acc["loss"] += per[rows].double().sum()
            acc["structures"] += rows.sum()

    def on_validation_epoch_end(self) -> None:
        if not self._validation_due() or self.trainer.sanity_checking:
            return
        record: dict[str, float] = {"epoch": float(self.current_epoch), "step": float(self.global_step)}
        losses = []
        for t in self.tasks:
            acc = {k: float(self.trainer.strategy.reduce(v, reduce_op="sum")) for k, v in self._val[t.name].items()}
            if acc["n"] > 0 or acc["n_force"] > 0:  # the mean loss over all its validation structures, as in
                # training (one without a label contributes no term): not over those with energies only
                record[f"val/{t.name}/loss"] = acc["loss"] / acc["structures"]
                losses.append(record[f"val/{t.name}/loss"])
            for key, value in metrics_from_sums(acc, t).items():
                if key != "n_structures":
                    record[f"val/{t.name}/{key}"] = value
        if not losses:
            return
        record["val/loss"] = float(np.mean(losses))
        # already summed over processes above: every rank holds the same values, rank 0 logs them
        self.log_dict({k: v for k, v in record.items() if k.startswith("val/")}, rank_zero_only=True)
        self.history.append(record)
        value = record.get(self.monitor)
        if value is None:
            raise AtomsiftError(
                f"the validation quantity '{self.monitor}' that picks the best weights was not computed",
                fix="check the task's metric setting against its labels",
            )
        for scheduler in self.lr_schedulers() if isinstance(self.lr_schedulers(), list) else [self.lr_schedulers()]:
            scheduler.report(value)
        if self.best is None or value < self.best:
            self.best, self.best_epoch = value, self.current_epoch
            if self.on_best is not None:
                self.on_best(self, self.current_epoch, value)

    # ------------------------------------------------------------------ checkpoints

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()
        self._structures_at_fit_start = self.counters["structures"]
        if self.ema is not None:  # not a submodule: follow the model's device and dtype (precision "64")
            self.ema.to(device=self.device, dtype=next(self.model.parameters()).dtype)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the epoch's loss so far, summed over the processes (every process saves at the same points); on
        # resume the first process takes it: each process's own partial sum would otherwise be rank 0's
        epoch_loss = self._epoch_loss.clone().to(self.device)  # the all-reduce works in place: not our sum
        if self.trainer.world_size > 1:
            epoch_loss = self.trainer.strategy.reduce(epoch_loss, reduce_op="sum")
        checkpoint["atomsift"] = {
            "ema": None if self.ema is None else self.ema.state_dict(),
            "counters": dict(self.counters),
            "wall_time_s": self.wall_before + time.perf_counter() - self._fit_started,
            "batches_in_epoch": self.batches_in_epoch,
            "epoch_loss": epoch_loss.cpu(),
            "epoch_structures_at_start": self._epoch_structures_at_start,
            "epoch": self.current_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": list(self.history),
            "torch_rng": torch.get_rng_state(),
            # fitted at the first start only (a resume takes the heads' buffers from here): for the metadata of
            # model.pt / last.pt, which the runs share with model.metadata["normalizers"]
            "normalizers": dict(self.model.metadata.get("normalizers") or {}),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["atomsift"]
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.counters = dict(state["counters"])
        self.wall_before = float(state["wall_time_s"])
        self.batches_in_epoch = self._resume_skip = int(state["batches_in_epoch"])
        self._resume_epoch = int(state["epoch"])
        loss = state["epoch_loss"]
        self._epoch_loss = loss if self.global_rank == 0 else torch.zeros_like(loss)
        self._epoch_structures_at_start = state["epoch_structures_at_start"]
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("normalizers"):  # in place: the run's metadata dict holds the same object
            self.model.metadata.setdefault("normalizers", {}).update(state["normalizers"])

    @property
    def best_epoch_number(self) -> int | None:
        """The best epoch counted from 1, as the per-epoch lines and reports count."""
        return None if self.best_epoch is None else self.best_epoch + 1

    def weights_for_saving(self) -> torch.nn.Module:
        """The model whose weights are kept: the EMA copy (or the raw model without EMA)."""
        return self.ema.module if self.ema is not None else self.model
