"""What subnormal floats cost on this CPU: GemNet-OC's Gaussian radial basis with and without its floor.

The basis of S's atom-atom graph on 8 oxides (12 A, up to 1000 neighbours: 29,112 pairs x 128 Gaussians) is
built two ways: the plain formula exp(coeff (d - mu)^2) (2-5 % of its values are float32 subnormals) and
atomsift's (exponent clamped at -46.5, values below 1e-20 zeroed). Then the products that read it in a
training step: the projection rad @ W (W: 128 x 16) and its weight gradient g^T @ rad. Timings alternate
plain / floored; the table gives medians and the median per-pair ratio.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/subnormal_speed.py [--pairs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from _machine import machine_line
from atomsift.data import open_dataset
from atomsift.graph import collate
from atomsift.models import build_backbone
from atomsift.models.registry import presets
from train_step_speed import alternate, median_interval


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """fn as a function returning its wall time in seconds (what `alternate` runs)."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20)
    args = parser.parse_args()
    ds = open_dataset("bundled:oxides")
    batch = collate([ds[i] for i in range(8)], dtype=torch.float32)
    model = build_backbone("gemnet_oc", **presets("gemnet_oc")["S"])
    graphs = model.build_graphs(batch)
    basis = model.radial_basis_aint
    d = graphs.a2a["distance"] * basis.inv_cutoff
    offset, coeff = basis.rbf.offset, basis.rbf.coeff

    def plain() -> torch.Tensor:
        diff = d[:, None] - offset[None, :]
        return basis.envelope(d)[:, None] * torch.exp(coeff * diff * diff)

    def floored() -> torch.Tensor:
        return basis(graphs.a2a["distance"])

    rad = {"plain": plain(), "floored": floored()}
    tiny = torch.finfo(torch.float32).tiny
    sub = {k: float(((v != 0) & (v.abs() < tiny)).float().mean()) for k, v in rad.items()}
    normal = rad["plain"].abs() >= 1e-17
    assert torch.equal(rad["plain"][normal], rad["floored"][normal])  # the same basis but for its tiny tail
    weight = torch.randn(16, rad["plain"].shape[1])
    grad = torch.randn(rad["plain"].shape[0], 16)
    work = {
        "basis": {"plain": plain, "floored": floored},
        "rad @ W": {k: (lambda r=r: r @ weight.T) for k, r in rad.items()},
        "g^T @ rad": {k: (lambda r=r: grad.T @ r) for k, r in rad.items()},
    }
    print(f"{machine_line()}  load {os.getloadavg()[0]:.2f}")
    print(
        f"# basis {tuple(rad['plain'].shape)}: subnormal share plain {sub['plain']:.2%}, floored {sub['floored']:.2%}"
    )
    header = f"{'work':<10} {'pairs':>5} {'plain ms':>9} {'floored ms':>10} {'plain/floored [95 %]':>22}"
    print(header)
    print("-" * len(header))
    for name, sides in work.items():
        plain_times, floored_times = alternate(timed(sides["plain"]), timed(sides["floored"]), args.pairs, 0.0)
        times = {"plain": plain_times, "floored": floored_times}
        ratio, low, high = median_interval([a / b for a, b in zip(times["plain"], times["floored"])])
        print(
            f"{name:<10} {args.pairs:>5} {1000 * statistics.median(times['plain']):>9.2f} "
            f"{1000 * statistics.median(times['floored']):>10.2f} {f'{ratio:.1f}x [{low:.1f}, {high:.1f}]':>22}",
            flush=True,
        )
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
