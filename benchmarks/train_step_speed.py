"""Training-step throughput of atomsift's backbones, side by side with fairchem 1.10's GemNet-OC.

One training step = build graphs, forward, energy + forces, loss (L1 energy + mean per-atom force error
norm), backward, AdamW step (by default each side's AdamW as its trainer builds it: atomsift's one-kernel
AdamW on CPU, torch's default for fairchem 1.10's trainer; ``--optimizer same`` gives both torch's default,
comparing the models alone). Measured on real bundled data: rMD17 ethanol molecules (8 A cutoff, no pbc)
and periodic PBE oxides (12 A, periodic), 30 neighbours, for PaiNN (gradient forces), atomsift GemNet-OC
"small" and "S" (direct forces as in the paper's pretraining, and/or gradient forces) and, where
fairchem-core 1.10 is importable, fairchem's GemNet-OC with the same hyperparameters, the same weights and
the same batches (gradient forces: fairchem's ``direct_forces=False``).

The two sides of a row alternate step by step (A B, B A, A B, ...: each goes first in half of the pairs),
so load from other processes lands on both; the table gives each side's median ms/step and the median over
pairs of the per-pair ratio fairchem / atomsift with a 95 % bootstrap interval, and "dE rel", the largest
relative energy difference between the two sides before the first step (they must compute the same thing).

    .venv/bin/python benchmarks/train_step_speed.py                 # atomsift models only
    fairchem-venv/bin/python benchmarks/train_step_speed.py         # adds fairchem (docs/gemnet_oc.md)
    ... --models painn,gemnet-small --forces direct,gradient --pairs 10 --min-time 10 --device cuda
    ... --against padded      # side B: atomsift with fairchem's padded quadruplet sum instead of fairchem
    ... --precision bf16-mixed                  # atomsift's side under bf16 autocast (Lightning's bf16-mixed)
    ... --precision bf16-mixed --against fp32   # side B: the same atomsift model in float32

bf16-mixed is not the same computation: "dE rel" then shows what it costs in accuracy. fairchem 1.10's
trainer has mixed precision for CUDA only (its `amp` makes a CUDA GradScaler and autocast), so on the CPU it
trains in float32.

Prints one table; paste it into benchmarks/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from collections.abc import Callable

import torch

from _machine import machine_line
from atomsift.data import open_dataset
from atomsift.graph import collate
from atomsift.models import AtomsModel, build_backbone
from atomsift.models.backbones.gemnet_oc.compat import FairchemGemNetOC, gemnet_from_fairchem
from atomsift.models.backbones.gemnet_oc.fairchem_bridge import (
    fairchem_available,
    fairchem_gemnet,
    to_fairchem_batch,
)
from atomsift.models.registry import presets
from atomsift.train.optimizer import fused_adamw

DATA = {
    # name: (bundled dataset, structures per batch, GemNet-OC graph overrides)
    "ethanol": (
        "bundled:ethanol",
        16,
        {"cutoff": 8.0, "cutoff_qint": 8.0, "cutoff_aeaint": 8.0, "cutoff_aint": 8.0, "use_pbc": False},
    ),
    "oxides": ("bundled:oxides", 8, {}),
}


def loss_of(out: dict[str, torch.Tensor], batch) -> torch.Tensor:
    """L1 energy per structure + mean over atoms of the force error norm (the paper's loss shape)."""
    e = (out["energy"] - batch.energy).abs().mean()
    f = (out["forces"] - batch.forces).norm(dim=1).mean()
    return e + 10.0 * f


def trainer(
    model: torch.nn.Module, run: Callable[[], tuple[dict, object]], device: torch.device, fused: bool | None = None
) -> Callable[[], float]:
    """A function doing one training step and returning its wall time in seconds (AdamW's ``fused`` as given)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=fused)
    model.train()

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out, batch = run()
        loss_of(out, batch).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def alternate(a: Callable[[], float], b: Callable[[], float] | None, pairs: int, min_time: float) -> tuple[list, list]:
    """Step times of a and b: one warm-up step each, then pairs A B, B A, ... until pairs and min_time are met."""
    a()
    if b is not None:
        b()
    times_a: list[float] = []
    times_b: list[float] = []
    start = time.perf_counter()
    while len(times_a) < pairs or time.perf_counter() - start < min_time:
        if b is None:
            times_a.append(a())
        elif len(times_a) % 2 == 0:
            times_a.append(a())
            times_b.append(b())
        else:
            times_b.append(b())
            times_a.append(a())
    return times_a, times_b


def median_interval(values: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(median, 2.5 %, 97.5 %) of the median of values, by bootstrap resampling."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(values, dtype=torch.float64)
    idx = torch.randint(0, len(values), (draws, len(values)), generator=gen)
    meds = x[idx].median(dim=1).values.sort().values
    return statistics.median(values), float(meds[int(0.025 * draws)]), float(meds[int(0.975 * draws) - 1])


def dense_share(step: Callable[[], float]) -> tuple[float, float]:
    """(step ms, ms in dense matrix products aten::mm / addmm) of one step run under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = step()
    dense = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm"))
    return 1000 * wall, dense / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="painn,gemnet-small,gemnet-S")
    parser.add_argument("--data", default="ethanol,oxides")
    parser.add_argument("--forces", default="direct", help="GemNet-OC force modes: direct, gradient or both")
    parser.add_argument("--pairs", type=int, default=10, help="least number of timed pairs (steps for PaiNN)")
    parser.add_argument("--min-time", type=float, default=10.0, help="least seconds of timed pairs per row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dense-share",
        action="store_true",
        help="after each GemNet-OC row, profile one step per side and print the time in dense matrix products "
        "(the same products on both sides): B's step over A's dense time bounds the ratio any A could reach",
    )
    parser.add_argument(
        "--optimizer",
        default="trainers",
        choices=["trainers", "same"],
        help="trainers: each side's AdamW as its trainer builds it (atomsift: train.optimizer.fused_adamw, the "
        "one-kernel AdamW on CPU; fairchem 1.10's trainer: torch's default); same: torch's default on both sides",
    )
    parser.add_argument(
        "--against",
        default="fairchem",
        choices=["fairchem", "padded", "fp32"],
        help="GemNet-OC side B: fairchem 1.10's model, atomsift with fairchem's padded quadruplet sum "
        "(GemNetOC.factor_quadruplets = False) to measure the factored sum alone, or atomsift in float32 (with "
        "--precision bf16-mixed: what the precision alone gives)",
    )
    parser.add_argument(
        "--precision",
        default="32",
        choices=["32", "bf16-mixed"],
        help="atomsift's side: float32, or forward and loss under bf16 autocast as Lightning's bf16-mixed does "
        "(the CPU's bf16 matrix units where it has them, e.g. AMX)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)

    def ours_fused(model: torch.nn.Module) -> bool | None:
        return fused_adamw(list(model.parameters())) if args.optimizer == "trainers" else None

    with_fairchem = fairchem_available()
    other = args.against

    def autocast():  # the atomsift side's forward and loss, as Lightning's precision setting would run them
        if args.precision == "bf16-mixed":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(m: torch.nn.Module, b) -> tuple[dict, object]:
        with autocast():
            return m(b), b

    print(
        f"{machine_line()}  device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"  fairchem {'yes' if with_fairchem else 'not installed'}  load {os.getloadavg()[0]:.2f}"
        + f"  optimizer {args.optimizer}  atomsift precision {args.precision}"
    )
    header = (
        f"{'model':<13} {'data':<8} {'forces':<8} {'batch':>5} {'atoms':>5} {'pairs':>5} {'atomsift ms':>11} "
        f"{'atoms/s':>8} {other + ' ms':>11} {other + '/atomsift [95 %]':>25} {'dE rel':>9}"
    )
    print(header)
    print("-" * len(header))
    for data_name in args.data.split(","):
        source, batch_size, graph = DATA[data_name]
        ds = open_dataset(source)
        batch = collate([ds[i] for i in range(batch_size)], dtype=torch.float32).to(device)
        batch.tags[:] = 2  # JMP's convention for non-OC20 data: every atom takes part in quadruplets
        natoms = batch.num_atoms
        for name in args.models.split(","):
            if name == "painn":
                torch.manual_seed(0)
                model = AtomsModel(build_backbone("painn"), {"energy": {"kind": "energy", "forces": "gradient"}})
                model.to(device)
                fused = ours_fused(model)
                times, _ = alternate(
                    trainer(model, lambda m=model, b=batch: forward(m, b), device, fused),
                    None,
                    args.pairs,
                    args.min_time,
                )
                ms = 1000 * statistics.median(times)
                print(
                    f"{name:<13} {data_name:<8} {'gradient':<8} {batch_size:>5} {natoms:>5} {len(times):>5} "
                    f"{ms:>11.1f} {1000 * natoms / ms:>8.0f}"
                )
                continue
            for forces in args.forces.split(","):
                preset = name.split("-", 1)[1]
                config = {**presets("gemnet_oc")[preset], **graph, "direct_forces": forces == "direct"}
                reference = (
                    fairchem_gemnet(config, seed=0).to(device) if with_fairchem and args.against == "fairchem" else None
                )
                if reference is not None:
                    state = reference.state_dict()
                else:
                    torch.manual_seed(0)
                    state = build_backbone("gemnet_oc", **config).state_dict()
                backbone, heads, _ = gemnet_from_fairchem(config, state)
                ours = FairchemGemNetOC(backbone, heads).to(device)
                step_ours = trainer(ours, lambda m=ours, b=batch: forward(m, b), device, ours_fused(ours))
                run_ref = None
                if args.against == "fp32":
                    plain = copy.deepcopy(ours)  # the same weights, heads included, run in float32
                    run_ref = lambda m=plain, b=batch: (m(b), b)  # noqa: E731
                elif args.against == "padded":
                    padded = copy.deepcopy(ours)  # the same weights, heads included
                    padded.backbone.factor_quadruplets = False
                    run_ref = lambda m=padded, b=batch: (m(b), b)  # noqa: E731
                elif reference is not None:
                    data = to_fairchem_batch(batch).to(device)
                    run_ref = lambda m=reference, d=data, b=batch: (m(d), b)  # noqa: E731
                agree = ""
                if run_ref is not None:  # both sides must compute the same thing: energies before any step
                    e_ours, e_ref = forward(ours, batch)[0]["energy"].detach().double(), run_ref()[0]["energy"].detach()
                    agree = f" {float(((e_ours - e_ref).abs() / e_ref.abs()).max()):>9.1e}"
                if args.against == "fairchem":
                    step_ref = trainer(reference, run_ref, device) if run_ref else None  # fairchem: torch's default
                else:
                    copied = plain if args.against == "fp32" else padded
                    step_ref = trainer(copied, run_ref, device, ours_fused(copied))
                if args.precision != "32":  # what bf16 costs, on scales that near-zero energies do not inflate
                    low, full = forward(ours, batch)[0], copy.deepcopy(ours)(batch)
                    low, full = (
                        {k: v.detach().double() for k, v in low.items()},
                        {k: v.detach() for k, v in full.items()},
                    )
                    d_e = float((low["energy"] - full["energy"]).abs().max() / full["energy"].abs().max())
                    d_f = float((low["forces"] - full["forces"]).abs().max() / full["forces"].abs().max())
                    print(f"#   {args.precision} vs float32, same weights: max|dE|/max|E| {d_e:.1e}, "
                          f"max|dF|/max|F| {d_f:.1e}", flush=True)  # fmt: skip
                times, ref_times = alternate(step_ours, step_ref, args.pairs, args.min_time)
                ms = 1000 * statistics.median(times)
                line = (
                    f"{name:<13} {data_name:<8} {forces:<8} {batch_size:>5} {natoms:>5} {len(times):>5} "
                    f"{ms:>11.1f} {1000 * natoms / ms:>8.0f}"
                )
                if ref_times:
                    ratio, low, high = median_interval([r / t for r, t in zip(ref_times, times)])
                    ratio_text = f"{ratio:.2f}x [{low:.2f}, {high:.2f}]"
                    line += f" {1000 * statistics.median(ref_times):>11.1f} {ratio_text:>25}{agree}"
                print(line, flush=True)
                if args.dense_share and step_ref is not None and device.type == "cpu":
                    (wall_a, dense_a), (wall_b, dense_b) = dense_share(step_ours), dense_share(step_ref)
                    print(
                        f"#   profiled step: atomsift {wall_a:.0f} ms, {dense_a:.0f} ms in dense products; {other} "
                        f"{wall_b:.0f} ms, {dense_b:.0f} ms ({dense_b / wall_b:.0%}); bound {wall_b / dense_a:.2f}x",
                        flush=True,
                    )
    print(f"# load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
