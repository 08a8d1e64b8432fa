"""Neighbour-list speed: atomsift's batched `radius_graph` (torch and vesin backends) against ASE's
`neighbor_list`, matscipy and vesin (numpy and torch packages, if importable), on the bundled data at
the paper's graph settings.

    .venv/bin/python benchmarks/neighbor_speed.py            # ~2 minutes on 2 CPU cores
    .venv/bin/python benchmarks/neighbor_speed.py --device cuda

Methods are timed in alternation: each repetition times every method once (a method repeats its pass
over the structures until --min-seconds have passed), so load from other processes lands on all of them;
the table reports the median over --reps repetitions and the min-max range of structures/s.
ASE, matscipy and vesin build full lists (every pair within the cutoff, one structure per call); ASE runs
on the first --ase-structures structures only (one for "large"; it is slow). "large": --large rattled
216-atom MgO supercells at the OC20 settings (12 A, 30 nearest), where cell lists pay off. `radius_graph` is timed for full lists
(max_neighbors None) and at the paper's 30 nearest, on batches already collated (collate's own cost is a
separate row), with backend="torch" (the batched torch search) and backend="vesin" (vesin finds the pairs,
atomsift limits and sorts them: the same graph).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from _machine import cpu_name
from atomsift.data import open_dataset
from atomsift.graph import collate, graph_settings_for, radius_graph


def one_rep(fn: Callable[[], int], min_seconds: float) -> tuple[float, int]:
    """Run fn (returns edges) until min_seconds have passed: (seconds per run, edges)."""
    runs, start = 0, time.perf_counter()
    while True:
        edges = fn()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / runs, edges


def _optional(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        return None


def load(name: str, limit: int) -> list[Atoms]:
    """The first `limit` structures of a data set, or `limit` rattled 216-atom MgO supercells ("large")."""
    if name == "large":
        out = []
        for seed in range(limit):
            a = bulk("MgO", "rocksalt", 4.21, cubic=True) * (3, 3, 3)
            a.rattle(0.05, seed=seed)
            out.append(a)
        return out
    ds = open_dataset(name)
    return [ds[i].to_atoms() for i in range(min(limit, len(ds)))]


def methods_for(name: str, settings_name: str, limit: int, args: argparse.Namespace) -> tuple[str, list]:
    """(row label, [(method name, structures per pass, fn)]) for one data set."""
    records = load(name, limit)
    s = graph_settings_for(settings_name)
    n = len(records)
    label = f"{name} ({n} str, {sum(len(r) for r in records) / n:.1f} atoms avg; {s.cutoff:g} A, pbc={s.pbc})"
    atoms_list = []
    for r in records:
        a = r.copy()
        if not s.pbc:  # a box around molecules (matscipy needs one), pbc False
            a.pbc = False
            a.positions -= a.positions.min(axis=0) - s.cutoff
            a.cell = np.diag(np.ptp(a.positions, axis=0) + 2 * s.cutoff)
        atoms_list.append(a)
    ase_atoms = atoms_list[: args.ase_structures if name != "large" else 1]
    out = [
        (f"ase.neighborlist (full; first {len(ase_atoms)} str)", len(ase_atoms),
         lambda: sum(len(neighbor_list("i", a, s.cutoff)) for a in ase_atoms)),
    ]  # fmt: skip
    matscipy = _optional("matscipy.neighbours")
    if matscipy is not None:
        out.append(
            ("matscipy (full)", n, lambda: sum(len(matscipy.neighbour_list("i", a, s.cutoff)) for a in atoms_list))
        )
    vesin = _optional("vesin")
    if vesin is not None:
        finder = vesin.NeighborList(cutoff=s.cutoff, full_list=True, n_threads=1)
        arrays = [(a.positions, a.cell.array, bool(s.pbc)) for a in atoms_list]
        out.append(("vesin (full)", n, lambda: sum(len(finder.compute(*x, "ij")[0]) for x in arrays)))
    vesin_torch = _optional("vesin_torch")
    if vesin_torch is not None:
        tfinder = vesin_torch.NeighborList(cutoff=s.cutoff, full_list=True, n_threads=1)
        tensors = [(torch.from_numpy(a.positions), torch.from_numpy(a.cell.array), bool(s.pbc)) for a in atoms_list]
        out.append(("vesin-torch (full)", n, lambda: sum(len(tfinder.compute(*x, "ij")[0]) for x in tensors)))

    bs = args.batch_size
    chunks = [records[i : i + bs] for i in range(0, n, bs)]
    out.append((f"collate, batches of {bs}", n, lambda: [collate(c, dtype=torch.float32) for c in chunks] and 0))
    batches = [collate(c, dtype=torch.float32).to(args.device) for c in chunks]
    singles = [collate([r], dtype=torch.float32).to(args.device) for r in records]

    def ours(max_neighbors: int | None, group: list, backend: str) -> Callable[[], int]:
        def run() -> int:
            total = sum(radius_graph(b, s.cutoff, max_neighbors, pbc=s.pbc, backend=backend).num_edges for b in group)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return total

        return run

    backends = ["torch"] + (["vesin"] if vesin is not None else [])
    for what, k, group, size in (("full", None, batches, bs), (f"{s.max_neighbors} nearest", s.max_neighbors, batches, bs),
                                 (f"{s.max_neighbors} nearest", s.max_neighbors, singles, 1)):  # fmt: skip
        for backend in backends:
            out.append((f"radius_graph ({what}), batch {size}, backend {backend}", n, ours(k, group, backend)))
    return label, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--molecules", type=int, default=1000, help="ethanol frames used")
    parser.add_argument("--crystals", type=int, default=295, help="oxide structures used")
    parser.add_argument("--large", type=int, default=8, help="216-atom MgO cells used (0: none)")
    parser.add_argument("--ase-structures", type=int, default=60, help="structures timed with ASE (slow)")
    parser.add_argument("--reps", type=int, default=5, help="alternated repetitions (median reported)")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="minimum timing per method and repetition")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: ASE, matscipy and vesin run on one too)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    print(f"python {platform.python_version()}, torch {torch.__version__}, device {args.device}{gpu}")
    print(f"alternated repetitions: {args.reps}, >= {args.min_seconds} s per method and repetition")
    rows = []
    sets = [("bundled:ethanol", "ani1x", args.molecules), ("bundled:oxides", "oc20", args.crystals)]
    sets += [("large", "oc20", args.large)] if args.large else []
    for name, settings, limit in sets:
        label, methods = methods_for(name, settings, limit, args)
        for _, _, fn in methods:  # warm-up
            fn()
        times: list[list[float]] = [[] for _ in methods]
        edges = [0] * len(methods)
        for _ in range(args.reps):
            for m, (_, _, fn) in enumerate(methods):
                t, edges[m] = one_rep(fn, args.min_seconds)
                times[m].append(t)
        for (method, count, _), ts, e in zip(methods, times, edges):
            t = statistics.median(ts)
            rows.append((label, method, count / t, count / max(ts), count / min(ts), e / t if e else float("nan"), e))

    print()
    print("| data | method | structures/s (median) | min-max | edges/s | edges |")
    print("|---|---|---:|---:|---:|---:|")
    for label, method, sps, lo, hi, eps, edges in rows:
        eps_txt = "-" if eps != eps else f"{eps:,.0f}"
        print(f"| {label} | {method} | {sps:,.0f} | {lo:,.0f}-{hi:,.0f} | {eps_txt} | {edges:,} |")


if __name__ == "__main__":
    main()
