"""Neighbour-list speed: atomsift's batched `radius_graph` against ASE's `neighbor_list` (and matscipy's
if it is importable) on the bundled data, at the paper's graph settings.

    .venv/bin/python benchmarks/neighbor_speed.py            # ~1 minute on 2 CPU cores
    .venv/bin/python benchmarks/neighbor_speed.py --device cuda

Rows: structures/s and edges/s (edges returned per second) over the same structures in the same run.
ASE and matscipy build full lists (every pair within the cutoff, one structure per call);
`radius_graph` is timed both for full lists (max_neighbors None) and at the paper's 30 nearest, on
batches of --batch-size structures already collated (collate's own cost is a separate row).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from ase.neighborlist import neighbor_list

from _machine import cpu_name
from atomsift.data import open_dataset
from atomsift.graph import collate, graph_settings_for, radius_graph


def timed(fn: Callable[[], int], min_seconds: float, warm_up: bool = True) -> tuple[float, int, int]:
    """Run fn (returns edges) repeatedly for at least min_seconds: (seconds per run, edges, runs)."""
    if warm_up:
        fn()
    runs, start, edges = 0, time.perf_counter(), 0
    while True:
        edges = fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / runs, edges, runs


def bench_dataset(name: str, settings_name: str, limit: int, batch_size: int, device: str, min_s: float) -> list[tuple]:
    ds = open_dataset(name)
    records = [ds[i] for i in range(min(limit, len(ds)))]
    atoms_list = [r.to_atoms() for r in records]
    s = graph_settings_for(settings_name)
    n = len(records)
    natoms = sum(r.natoms for r in records)
    label = f"{name} ({n} str, {natoms / n:.1f} atoms avg; {s.cutoff:g} A, pbc={s.pbc})"
    rows = []

    def ase_full() -> int:
        total = 0
        for atoms in atoms_list:
            if not s.pbc:
                atoms = atoms.copy()
                atoms.pbc = False
            total += len(neighbor_list("i", atoms, s.cutoff))
        return total

    t, e, _ = timed(ase_full, min_s, warm_up=False)
    rows.append((label, "ase.neighborlist (full)", n / t, e / t, e))

    try:
        from matscipy.neighbours import neighbour_list as msp
    except ImportError:
        msp = None
    if msp is not None:
        boxed = []  # matscipy needs a cell even for molecules: a box around them, pbc False
        for a in atoms_list:
            if not s.pbc:
                a = a.copy()
                a.pbc = False
                a.positions -= a.positions.min(axis=0) - s.cutoff
                a.cell = np.diag(np.ptp(a.positions, axis=0) + 2 * s.cutoff)
            boxed.append(a)

        def msp_full() -> int:
            return sum(len(msp("i", a, s.cutoff)) for a in boxed)

        t, e, _ = timed(msp_full, min_s, warm_up=False)
        rows.append((label, "matscipy (full)", n / t, e / t, e))

    chunks = [records[i : i + batch_size] for i in range(0, n, batch_size)]

    def do_collate() -> int:
        for c in chunks:
            collate(c, dtype=torch.float32)
        return 0

    t, _, _ = timed(do_collate, min_s / 2)
    rows.append((label, f"collate, batches of {batch_size}", n / t, float("nan"), 0))
    batches = [collate(c, dtype=torch.float32).to(device) for c in chunks]

    def ours(max_neighbors: int | None, group: list) -> Callable[[], int]:
        def run() -> int:
            total = 0
            for b in group:
                total += radius_graph(b, s.cutoff, max_neighbors, pbc=s.pbc).num_edges
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return total

        return run

    t, e, _ = timed(ours(None, batches), min_s)
    rows.append((label, f"radius_graph (full), batch {batch_size}", n / t, e / t, e))
    t, e, _ = timed(ours(s.max_neighbors, batches), min_s)
    rows.append((label, f"radius_graph ({s.max_neighbors} nearest), batch {batch_size}", n / t, e / t, e))
    singles = [collate([r], dtype=torch.float32).to(device) for r in records]
    t, e, _ = timed(ours(s.max_neighbors, singles), min_s)
    rows.append((label, f"radius_graph ({s.max_neighbors} nearest), batch 1", n / t, e / t, e))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--molecules", type=int, default=1000, help="ethanol frames used")
    parser.add_argument("--crystals", type=int, default=295, help="oxide structures used")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="minimum timing per row")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: ASE and matscipy are single-threaded too)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}")
    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    print(f"python {platform.python_version()}, torch {torch.__version__}, device {args.device}{gpu}")
    rows = bench_dataset("bundled:ethanol", "ani1x", args.molecules, args.batch_size, args.device, args.min_seconds)
    rows += bench_dataset("bundled:oxides", "oc20", args.crystals, args.batch_size, args.device, args.min_seconds)

    print()
    print("| data | method | structures/s | edges/s | edges |")
    print("|---|---|---:|---:|---:|")
    for label, method, sps, eps, edges in rows:
        eps_txt = "-" if eps != eps else f"{eps:,.0f}"
        print(f"| {label} | {method} | {sps:,.0f} | {eps_txt} | {edges:,} |")


if __name__ == "__main__":
    main()
