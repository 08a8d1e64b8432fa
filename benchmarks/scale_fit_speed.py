"""GemNet-OC scale-factor fitting: passes that stop after the factor being fitted against whole passes.

`fit_scale_factors` fits the factors one at a time in order of first use, running every fitting batch once
per factor; a pass stops right after the factor being fitted (used once per pass), since the rest of the
forward cannot change its statistics. Side B runs every pass to the end (the procedure of fairchem's fit.py),
by clearing the stop before each factor's call. Both sides fit a fresh copy of the same random model on the
same batches (bundled data, `--batches` batches of `--batch-size` structures, as `atomsift pretrain` /
`finetune` do before training a new GemNet-OC), alternating A, B, A, B; the fitted values must be equal.
Command:

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/scale_fit_speed.py
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from _machine import machine_line
from atomsift.data import open_dataset
from atomsift.graph import collate
from atomsift.models.backbones.gemnet_oc import scaling
from atomsift.models.backbones.gemnet_oc.model import GemNetOC

_stopping_forward = scaling.ScaleFactor.forward


def _whole_pass_forward(self, x, *, ref=None):  # side B: never stop a pass early
    self.stop_when_seen = False
    return _stopping_forward(self, x, ref=ref)


def fit_seconds(model: GemNetOC, batches: list, whole: bool) -> tuple[float, dict[str, float]]:
    """Wall seconds of fitting a copy of `model` on `batches`, and the fitted values."""
    fresh = copy.deepcopy(model)
    scaling.ScaleFactor.forward = _whole_pass_forward if whole else _stopping_forward
    try:
        start = time.perf_counter()
        values = scaling.fit_scale_factors(fresh, batches)
        return time.perf_counter() - start, values
    finally:
        scaling.ScaleFactor.forward = _stopping_forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="small")
    parser.add_argument("--data", default="ethanol", help="bundled sets, e.g. ethanol,oxides (oxides: minutes a fit)")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    print(f"{machine_line()}  {args.batches} batches of {args.batch_size}  load {os.getloadavg()[0]:.2f}")
    header = f"{'preset':<7} {'data':<8} {'factors':>7} {'pairs':>5} {'stopping s':>10} {'whole s':>8} {'whole/stopping':>14}"
    print(header)
    print("-" * len(header))
    for data_name in args.data.split(","):
        ds = open_dataset(f"bundled:{data_name}")
        size = args.batch_size
        batches = [collate([ds[i] for i in range(k * size, (k + 1) * size)]) for k in range(args.batches)]
        for preset in args.presets.split(","):
            torch.manual_seed(0)
            model = GemNetOC.from_preset(preset).eval()
            times: dict[bool, list[float]] = {False: [], True: []}
            fitted: dict[bool, dict[str, float]] = {}
            for _ in range(args.pairs):
                for whole in (False, True):
                    seconds, fitted[whole] = fit_seconds(model, batches, whole)
                    times[whole].append(seconds)
            if fitted[False] != fitted[True]:
                raise SystemExit(f"{preset} {data_name}: the two procedures fitted different values")
            a, b = statistics.median(times[False]), statistics.median(times[True])
            ratios = sorted(w / s for s, w in zip(times[False], times[True]))
            print(
                f"{preset:<7} {data_name:<8} {len(fitted[False]):>7} {args.pairs:>5} {a:>10.1f} {b:>8.1f} "
                f"{statistics.median(ratios):>9.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}]",
                flush=True,
            )
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
