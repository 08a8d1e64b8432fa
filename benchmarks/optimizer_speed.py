"""AdamW steps on CPU: PyTorch's default (a per-tensor loop on CPU) against the one-kernel ``fused=True`` that
atomsift's trainer uses on CPU, on the parameters of GemNet-OC presets and PaiNN.

Steps alternate A B, B A, ... (each side first in half of the pairs); the table gives medians and the median
per-pair ratio with a 95 % bootstrap interval, and the largest difference between the two sides' parameters
after all steps (same gradients, same start: they must agree to float rounding).

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/optimizer_speed.py [--pairs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from _machine import machine_line
from atomsift.models import build_backbone
from atomsift.models.registry import presets
from train_step_speed import alternate, median_interval

MODELS = {
    "painn": lambda: build_backbone("painn"),
    "gemnet-small": lambda: build_backbone("gemnet_oc", **presets("gemnet_oc")["small"]),
    "gemnet-S": lambda: build_backbone("gemnet_oc", **presets("gemnet_oc")["S"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="painn,gemnet-small,gemnet-S")
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    print(f"{machine_line()}  load {os.getloadavg()[0]:.2f}")
    header = f"{'model':<13} {'parameters':>11} {'pairs':>5} {'default ms':>10} {'fused ms':>9} {'ratio [95 %]':>20} {'max |dp|':>9}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        torch.manual_seed(0)
        params = [p for p in MODELS[name]().parameters() if p.requires_grad]
        grads = [torch.randn_like(p) * 1e-3 for p in params]
        sides = {}
        for fused in (False, True):
            copies = [p.detach().clone().requires_grad_(True) for p in params]
            for c, g in zip(copies, grads):
                c.grad = g.clone()
            opt = torch.optim.AdamW(copies, lr=1e-4, weight_decay=0.01, fused=True if fused else None)

            def step(opt=opt) -> float:
                start = time.perf_counter()
                opt.step()
                return time.perf_counter() - start

            sides[fused] = (copies, step)
        # one warm-up step each (it creates the optimizer state), then the alternating pairs
        default, fused_times = alternate(sides[False][1], sides[True][1], args.pairs, 0.0)
        times = {False: default, True: fused_times}
        ratio, low, high = median_interval([a / b for a, b in zip(times[False], times[True])])
        diff = max(float((a - b).detach().abs().max()) for a, b in zip(sides[False][0], sides[True][0]))
        print(
            f"{name:<13} {sum(p.numel() for p in params):>11,} {args.pairs:>5} "
            f"{1000 * statistics.median(times[False]):>10.1f} {1000 * statistics.median(times[True]):>9.1f} "
            f"{f'{ratio:.2f}x [{low:.2f}, {high:.2f}]':>20} {diff:>9.1e}",
            flush=True,
        )
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
