"""Speed of CSI's Frechet distance and memory of its streaming statistics.

Table 1, side by side in one run on the same random SPD covariances (covariances of n = 4 d random
features with a decaying spectrum, each set in its own random basis), for d = 256, 1024, 3200:
  - the scipy sqrtm route of the reference implementations (pytorch-fid / clean-fid / the paper's code):
    sqrtm(S1 @ S2), retried with 1e-6 I added to both diagonals when not finite, real part kept;
  - atomsift's route: FrechetReference(downstream) built once (one Cholesky factor), then distance(upstream)
    per candidate (two triangular products and the eigenvalues only of one symmetric matrix);
  - per-pair times excluding and including the one-off reference cost, ratios, relative difference.
Table 2: peak memory of accumulating GaussianStats (d = 128) over 10,000 structures of 10, 100 and 1000
atoms, rows generated on the fly per structure, each case in a fresh process.

    .venv/bin/python benchmarks/frechet_speed.py                 # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/frechet_speed.py --dims 256 1024 --structures 1000   # quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics as pystats
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import psutil
import scipy
import scipy.linalg

from atomsift.csi.frechet import FrechetReference
from atomsift.csi.statistics import GaussianStats


# -- the reference route ---------------------------------------------------------------------------------
def frechet_sqrtm(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> tuple[float, bool]:
    """The reference implementations' route: (value, whether the 1e-6 retry was needed)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    retried = False
    if not np.isfinite(covmean).all():
        retried = True
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)), retried


# -- random statistics -----------------------------------------------------------------------------------
def random_gaussian(rng: np.random.Generator, d: int, decay: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """(mu, S) of n = 4 d random features: spectrum (k+1)^-decay in a random orthonormal basis."""
    n = 4 * d
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scale = np.sqrt((np.arange(d) + 1.0) ** -decay)
    x = (rng.standard_normal((n, d)) * scale) @ q.T + shift * rng.standard_normal(d) / np.sqrt(d)
    stats = GaussianStats(d)
    stats.update(x)
    return stats.mean, stats.covariance()


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def speed_table(dims: list[int], n_upstream: int, seed: int) -> list[dict]:
    rows = []
    for d in dims:
        rng = np.random.default_rng(seed + d)
        t0 = time.perf_counter()
        mu_d, s_d = random_gaussian(rng, d, decay=1.0, shift=1.0)
        ups = [random_gaussian(rng, d, decay=1.0 + 0.25 * (i + 1), shift=2.0) for i in range(n_upstream)]
        t_build = time.perf_counter() - t0
        repeats = 3 if d <= 1024 else 1
        t_sqrtm, t_ref, t_pair, rel, retries, values = [], [], [], [], 0, []
        for _ in range(repeats):
            ref, dt_ref = timed(FrechetReference, mu_d, s_d)
            t_ref.append(dt_ref)
            for mu_u, s_u in ups:
                v_at, dt_at = timed(ref.distance, mu_u, s_u)
                (v_sq, retried), dt_sq = timed(frechet_sqrtm, mu_d, s_d, mu_u, s_u)
                t_sqrtm.append(dt_sq)
                t_pair.append(dt_at)
                retries += retried
                rel.append(abs(v_at - v_sq) / abs(v_sq))
                values.append(v_at)
        med_sq, med_ref, med_pair = pystats.median(t_sqrtm), pystats.median(t_ref), pystats.median(t_pair)
        rows.append(
            {
                "d": d,
                "pairs": len(t_pair),
                "sqrtm_s": med_sq,
                "ref_s": med_ref,
                "pair_excl_s": med_pair,
                "pair_incl_s": med_ref + med_pair,
                "ratio_excl": med_sq / med_pair,
                "ratio_incl": med_sq / (med_ref + med_pair),
                "max_rel_diff": max(rel),
                "retries": retries,
                "csi_range": (min(values), max(values)),
                "build_s": t_build,
            }
        )
        print(f"  d={d}: done ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return rows


# -- statistics memory -----------------------------------------------------------------------------------
def peak_rss() -> int:
    """Peak resident memory of this process image in bytes (VmHWM; unlike ru_maxrss, not inherited from
    the parent across fork + exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def memory_child(atoms: int, structures: int, d: int, seed: int) -> None:
    """Runs in a fresh process: stream per-structure rows into GaussianStats, print JSON."""
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    rng = np.random.default_rng(seed)
    tracemalloc.start()
    t0 = time.perf_counter()
    stats = GaussianStats(d)
    for _ in range(structures):
        stats.update(rng.standard_normal((atoms, d), dtype=np.float32))  # one structure's atom features
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "atoms": atoms,
                "rows": stats.n,
                "tracemalloc_peak": peak,
                "rss_before": rss_before,
                "rss_after": proc.memory_info().rss,
                "peak_rss": peak_rss(),
                "seconds": elapsed,
            }
        )
    )


def memory_table(atom_counts: list[int], structures: int, d: int, seed: int) -> list[dict]:
    rows = []
    for atoms in atom_counts:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-child",
            str(atoms),
            "--structures",
            str(structures),
            "--mem-dim",
            str(d),
            "--seed",
            str(seed),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  {atoms} atoms/structure: done ({rows[-1]['seconds']:.1f} s)", file=sys.stderr, flush=True)
    return rows


# -- report ----------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_s = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - informational only
        blas_s = "unknown BLAS"
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, {blas_s}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[256, 1024, 3200])
    ap.add_argument("--upstreams", type=int, default=2, help="upstream candidates per downstream set")
    ap.add_argument("--atoms", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--structures", type=int, default=10_000)
    ap.add_argument("--mem-dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.structures, args.mem_dim, args.seed)
        return

    start = time.perf_counter()
    print(f"# atomsift CSI numerics benchmark  {dt.datetime.now():%Y-%m-%d %H:%M}  {platform.node()}")
    print(f"# {machine()}")
    print(f"# load average at start (1/5/15 min): {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("Frechet distance per upstream-downstream pair (median seconds; same matrices for both routes;")
    print(f"{args.upstreams} upstream candidates per d, x3 repeats for d <= 1024; n = 4 d features per set)")
    print()
    speed = speed_table(args.dims, args.upstreams, args.seed)
    print(
        "| d | pairs | scipy sqrtm route s | atomsift reference (once) s | atomsift per pair, excl. reference s "
        "| atomsift per pair, incl. reference s | ratio excl. | ratio incl. | max rel. diff | sqrtm retries |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in speed:
        print(
            f"| {r['d']} | {r['pairs']} | {r['sqrtm_s']:.3f} | {r['ref_s']:.3f} | {r['pair_excl_s']:.3f} | "
            f"{r['pair_incl_s']:.3f} | {r['ratio_excl']:.1f}x | {r['ratio_incl']:.1f}x | "
            f"{r['max_rel_diff']:.1e} | {r['retries']} |"
        )
    print()
    print(
        "CSI values measured: "
        + "; ".join(f"d={r['d']}: {r['csi_range'][0]:.6g}..{r['csi_range'][1]:.6g}" for r in speed)
    )
    big = max(speed, key=lambda r: r["d"])
    ok = big["ratio_excl"] >= 10.0 and big["ratio_incl"] >= 7.0 and big["max_rel_diff"] <= 1e-10
    print(
        f"Target (d={big['d']}: a single call incl. the reference >= 7x faster, each further pair >= 10x, values "
        f"equal to 1e-10 relative): "
        f"{'met' if ok else 'NOT met'} ({big['ratio_excl']:.1f}x excl., {big['ratio_incl']:.1f}x incl. "
        f"reference, max rel. diff {big['max_rel_diff']:.1e})"
    )
    print()

    print(
        f"GaussianStats memory: {args.structures} structures, d = {args.mem_dim}, float32 rows generated per "
        "structure, float64 sums; each case in a fresh process"
    )
    print()
    mem = memory_table(args.atoms, args.structures, args.mem_dim, args.seed)
    print(
        "| atoms/structure | rows accumulated | tracemalloc peak MB | RSS before MB | RSS after MB "
        "| peak RSS (VmHWM) MB | all rows as float32 (not stored) MB | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m in mem:
        store = m["rows"] * args.mem_dim * 4 / 2**20
        print(
            f"| {m['atoms']} | {m['rows']} | {m['tracemalloc_peak'] / 2**20:.2f} | {m['rss_before'] / 2**20:.0f} "
            f"| {m['rss_after'] / 2**20:.0f} | {m['peak_rss'] / 2**20:.0f} | {store:.0f} | {m['seconds']:.1f} |"
        )
    print()
    print(
        f"# total wall time {time.perf_counter() - start:.0f} s; load average at end (1/5/15 min): "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


if __name__ == "__main__":
    main()
