"""Learning-rate schedule: linear warmup, cosine to a floor, then (optionally) reduce-on-plateau.

Per optimizer step t (warmup W steps from factor a, cosine over C steps to floor m_g of group g):

    f(t) = a + (1 - a) t / W                          for t < W
    f(t) = m_g + (1 - m_g) (1 + cos(pi (t - W) / C)) / 2   for W <= t < W + C
    f(t) = m_g                                        after, times the plateau factor p^k

where k counts the validations after the cosine without improvement for `patience` of them in a row (the
finetuning protocol: factor 0.8, patience 3; 25 for rMD17). lr_g(t) = lr x scale_g x f(t).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosinePlateau(LRScheduler):
    """Warmup, cosine and plateau in one stateful scheduler (its state is saved in checkpoints)."""

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        warmup_steps: int,
        start_factor: float,
        cosine_steps: int,
        min_factors: list[float],
        plateau_factor: float | None = None,
        patience: int = 3,
    ) -> None:
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)
        self.cosine_steps = max(1, int(cosine_steps))
        self.min_factors = list(min_factors)
        self.plateau_factor = plateau_factor
        self.patience = int(patience)
        self.plateau_scale = 1.0
        self.plateau_best: float | None = None
        self.plateau_bad = 0
        super().__init__(optimizer)

    def factor(self, step: int, floor: float) -> float:
        """f(t) of the docstring, without the plateau factor."""
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        t = step - self.warmup_steps
        if t < self.cosine_steps:
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t / self.cosine_steps))
        return floor

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        return [
            base * self.factor(step, floor) * self.plateau_scale
            for base, floor in zip(self.base_lrs, self.min_factors, strict=True)
        ]

    def report(self, value: float) -> None:
        """A validation result: after the cosine, `patience` results without improvement lower the rate."""
        if self.plateau_factor is None or self.last_epoch < self.warmup_steps + self.cosine_steps:
            return
        if self.plateau_best is None or value < self.plateau_best:
            self.plateau_best, self.plateau_bad = value, 0
            return
        self.plateau_bad += 1
        if self.plateau_bad > self.patience:
            self.plateau_scale *= self.plateau_factor
            self.plateau_bad = 0
            for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
                group["lr"] = lr


def warmup_problem(warmup_steps: int, total_steps: int, start_factor: float) -> str | None:
    """A sentence when the warm-up does not end before the run does (the learning rate never reaches lr), else None."""
    if warmup_steps <= 0 or warmup_steps < total_steps:
        return None
    reached = start_factor + (1.0 - start_factor) * max(total_steps - 1, 0) / warmup_steps
    lower = total_steps // 10 if total_steps // 10 < warmup_steps else 0
    return (
        f"warmup_steps={warmup_steps} is not below the run's {total_steps} optimizer steps: the learning rate "
        f"stays in its warm-up (it ends at {reached:.0%} of lr) and the cosine never starts; lower warmup_steps "
        f"(e.g. warmup_steps={lower}) or train longer"
    )
