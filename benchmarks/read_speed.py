"""Reading speed and memory of atomsift's readers.

Prints one table: records/s of sequential `ds[i]` reads for every reader on real fixtures and on small
generated files in the release layouts, then records/s and resident memory while iterating a generated
~1 GB file in the ANI-1x layout (memory must stay flat: no whole-file loads).

    .venv/bin/python benchmarks/read_speed.py            # full run (~1 GB written under benchmarks/_work)
    .venv/bin/python benchmarks/read_speed.py --large-gb 0.1
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil

from atomsift.data import open_dataset
from atomsift.data.bundled import bundled_dir

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
FIXTURES = HERE.parent / "tests" / "data"  # real release-format files shipped with the repository


def rate(ds, min_seconds: float = 1.0, limit: int | None = None) -> tuple[float, int, float]:
    """Sequential reads of ds[0..n): (records/s, records read, mean atoms per record)."""
    n = len(ds) if limit is None else min(len(ds), limit)
    count, atoms = 0, 0
    start = time.perf_counter()
    while True:
        for i in range(n):
            atoms += ds[i].natoms
        count += n
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return count / elapsed, count, atoms / count


# -- generated files in release layouts --------------------------------------------------------------
def ethanol_frames() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(numbers (9,), positions (F,9,3) A, energies (F,) eV, forces (F,9,3) eV/A) of the bundled rMD17 ethanol."""
    from ase.io import read

    frames = read(bundled_dir() / "rmd17_ethanol_1000.xyz", index=":")
    return (
        frames[0].numbers,
        np.stack([a.positions for a in frames]),
        np.array([a.get_potential_energy() for a in frames]),
        np.stack([a.get_forces() for a in frames]),
    )


def write_oc_lmdb(folder: Path, n_records: int, n_files: int = 2) -> Path:
    """OC20-style LMDB folder of pickled torch_geometric Data (newer writer names), ethanol molecules."""
    import lmdb
    import torch
    from torch_geometric.data import Data

    folder.mkdir(parents=True, exist_ok=True)
    numbers, pos, energy, forces = ethanol_frames()
    per_file = -(-n_records // n_files)
    k = 0
    for f in range(n_files):
        env = lmdb.open(str(folder / f"data.{f:04d}.lmdb"), subdir=False, map_size=2**34, meminit=False)
        with env.begin(write=True) as txn:
            m = min(per_file, n_records - k)
            for j in range(m):
                i = k % len(pos)
                data = Data(
                    pos=torch.tensor(pos[i], dtype=torch.float32),
                    cell=torch.eye(3).unsqueeze(0) * 20.0,
                    atomic_numbers=torch.tensor(numbers, dtype=torch.float32),
                    natoms=len(numbers),
                    tags=torch.zeros(len(numbers), dtype=torch.long),
                    fixed=torch.zeros(len(numbers)),
                    sid=k,
                    fid=0,
                    energy=float(energy[i]),
                    forces=torch.tensor(forces[i], dtype=torch.float32),
                )
                txn.put(str(j).encode(), pickle.dumps(data, protocol=-1))
                k += 1
            txn.put(b"length", pickle.dumps(m, protocol=-1))
        env.close()
    return folder


def write_rmd17(path: Path, n_frames: int) -> Path:
    """rMD17 npz (kcal/mol, kcal/mol/A) from the ethanol frames, tiled to n_frames."""
    numbers, pos, energy, forces = ethanol_frames()
    reps = -(-n_frames // len(pos))
    kcal = 0.0433641
    np.savez(
        path,
        nuclear_charges=numbers,
        coords=np.tile(pos, (reps, 1, 1))[:n_frames],
        energies=np.tile(energy / kcal, reps)[:n_frames],
        forces=np.tile(forces / kcal, (reps, 1, 1))[:n_frames],
        old_indices=np.arange(n_frames),
        old_energies=np.tile(energy / kcal, reps)[:n_frames],
        old_forces=np.tile(forces / kcal, (reps, 1, 1))[:n_frames],
    )
    return path


def write_large_ani1x(path: Path, target_gb: float, seed: int = 0) -> tuple[Path, int]:
    """An ANI-1x-layout HDF5 of about target_gb GB with random CHNO molecules (5-24 atoms).

    Per group: atomic_numbers uint8, coordinates float32 A, wb97x_dz.energy float64 Ha,
    wb97x_dz.forces float32 Ha/A, wb97x_tz.energy / .forces, ccsd(t)_cbs.energy (mostly NaN), as in the release.
    """
    rng = np.random.default_rng(seed)

    def per_conf_bytes(n: int) -> int:
        return n * 3 * 4 * 3 + 8 * 3  # coords + 2 force sets + 3 energies

    written, groups, conformers = 0, 0, 0
    target = int(target_gb * 1e9)
    with h5py.File(path, "w") as f:
        while written < target:
            counts = rng.integers(0, [9, 17, 4, 5])
            counts[0] = max(counts[0], 1)
            counts[1] = max(counts[1], 4)
            name = "".join(f"{s}{c}" for s, c in zip("CHNO", counts, strict=True))
            if name in f:
                continue
            numbers = np.repeat(np.array([6, 1, 7, 8], dtype=np.uint8), counts)
            n, m = len(numbers), int(rng.integers(200, 3000))
            g = f.create_group(name)
            g["atomic_numbers"] = numbers
            g["coordinates"] = (rng.normal(size=(m, n, 3)) * 1.5).astype(np.float32)
            g["wb97x_dz.energy"] = -40.0 * n + rng.normal(size=m)
            g["wb97x_dz.forces"] = (rng.normal(size=(m, n, 3)) * 0.05).astype(np.float32)
            g["wb97x_tz.energy"] = -40.0 * n + rng.normal(size=m)
            g["wb97x_tz.forces"] = (rng.normal(size=(m, n, 3)) * 0.05).astype(np.float32)
            cc = np.full(m, np.nan)
            cc[: m // 10] = -40.0 * n
            g["ccsd(t)_cbs.energy"] = cc
            written += m * per_conf_bytes(n)
            groups += 1
            conformers += m
    return path, conformers


def generated_cases(work: Path) -> list[tuple[str, str, str | None, dict]]:
    """Small files in the release layouts of the remaining readers, built with the tests' writers."""
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    from _make_h5 import t1x_reaction, write_transition1x
    from _make_materials import make_matbench, make_qmof
    from _make_npz_qm9 import write_sgdml
    from _make_oc import frames, pyg_data, write_lmdb, write_s2ef_pair

    rng = np.random.default_rng(0)
    cases: list[tuple[str, str, str | None, dict]] = []
    t1x = work / "transition1x.h5"
    if not t1x.exists():
        reactions = {
            f"C{a}H{b}O": {f"rxn{r:04d}": t1x_reaction(rng, [6] * a + [1] * b + [8], 100) for r in range(10)}
            for a in range(1, 5)
            for b in range(2, 7)
        }
        write_transition1x(t1x, reactions, {"train": list(reactions)[:15], "val": list(reactions)[15:]})
    cases.append(("Transition-1x, 20k frames (generated)", str(t1x), "transition1x", {}))
    slabs = work / "oc_lmdb_slabs"
    if not slabs.exists():
        slabs.mkdir()
        write_lmdb(slabs / "data.0000.lmdb", [pyg_data(f, names="new") for f in frames(5000)])
    cases.append(("OC LMDB, 34-atom adslabs x 5000 (generated)", str(slabs), "oc-lmdb", {}))
    s2ef = work / "s2ef"
    if not s2ef.exists():
        s2ef.mkdir()
        fr = frames(2000)
        write_s2ef_pair(s2ef, 0, fr, [-300.0] * len(fr))
    cases.append(("OC20 raw extxyz.xz + txt.xz, 2000 adslabs", str(s2ef), "oc20-extxyz", {}))
    md22 = work / "md22_AT-AT.npz"
    if not md22.exists():
        write_sgdml(md22, 50_000)
    cases.append(("MD22 sGDML npz, 50k frames (generated)", str(md22), "sgdml", {}))
    qm9 = work / "qm9_v3.pt"
    if not qm9.exists():
        items = []
        for i in range(20_000):
            z = torch.tensor([6, 1, 1, 1, 1, 8, 1, 6, 1])
            items.append(
                {
                    "z": z,
                    "pos": torch.randn(len(z), 3),
                    "y": torch.randn(1, 19),
                    "idx": torch.tensor([i]),
                    "name": f"gdb_{i + 1}",
                }
            )
        torch.save(items, qm9)
    cases.append(("QM9 PyG qm9_v3.pt, 20k molecules (generated)", str(qm9), "qm9-pyg", {}))
    if not (work / "qmof_database").exists():
        make_qmof(work, n=2000)
    cases.append(("QMOF JSON pair, 2000 MOFs (generated)", str(work / "qmof_database"), "qmof", {}))
    matbench = work / "matbench_phonons.json.gz"
    if not matbench.exists():
        make_matbench(work, n=1265)
    cases.append(("MatBench phonons json.gz, 1265 (generated)", str(matbench), "matbench", {}))
    return cases


def unpickle_comparison(folder: Path, n: int = 20_000) -> tuple[float, float]:
    """Values/s of decoding the same LMDB values: (atomsift's pyg_pickle.loads, pickle.loads with
    torch_geometric installed followed by .numpy() of each tensor, i.e. what a reader would do)."""
    import pickle as std_pickle

    import lmdb
    import torch

    from atomsift.data.readers.pyg_pickle import loads

    env = lmdb.open(str(folder / "data.0000.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        values = [txn.get(str(i).encode()) for i in range(n)]
    env.close()
    start = time.perf_counter()
    for v in values:
        loads(v)
    ours = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for v in values:
        data = std_pickle.loads(v)
        {k: (t.numpy() if isinstance(t, torch.Tensor) else t) for k, t in data.to_dict().items()}
    theirs = n / (time.perf_counter() - start)
    return ours, theirs


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def iterate_large(path: Path, limit: int | None) -> dict[str, float]:
    """Sequential pass over the large file: rate, RSS at start/middle/end and peak, random-access rate.

    Run in a freshly spawned process (see main) so the RSS figures hold only atomsift's reader."""
    ds = open_dataset(path, format="ani1x")
    n = len(ds) if limit is None else min(limit, len(ds))
    rss0 = rss_mb()
    peak = rss0
    marks = {}
    start = time.perf_counter()
    for i in range(n):
        ds[i]
        if i % 20_000 == 0:
            peak = max(peak, rss_mb())
        if i == n // 2:
            marks["rss_mid"] = rss_mb()
    seq = n / (time.perf_counter() - start)
    peak = max(peak, rss_mb())  # sequential pass only
    idx = np.random.default_rng(0).integers(0, len(ds), 20_000)
    start = time.perf_counter()
    for i in idx:
        ds[int(i)]
    rnd = len(idx) / (time.perf_counter() - start)
    return {
        "n": n,
        "seq": seq,
        "random": rnd,
        "rss_start": rss0,
        "rss_mid": marks.get("rss_mid", rss0),
        "rss_end": rss_mb(),
        "rss_peak": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-gb", type=float, default=1.0, help="size of the generated ANI-1x-layout file")
    parser.add_argument("--large-limit", type=int, default=None, help="read only the first N records of it")
    parser.add_argument("--lmdb-records", type=int, default=50_000)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)

    cases: list[tuple[str, str, str | None, dict]] = [
        ("ANI-1x fixture (real, 5 groups)", str(FIXTURES / "ani1x/ani1_n5.hdf5"), "ani1x", {}),
        ("SPICE fixture (real, 2 molecules)", str(FIXTURES / "spice/SPICE-1.1.4_n2.hdf5"), "spice", {}),
        ("QM9 raw xyz tarball (real, 10)", str(FIXTURES / "qm9/first10.tar.bz2"), "qm9-xyz", {}),
        ("extxyz rMD17 ethanol (bundled)", "bundled:ethanol", None, {}),
        ("extxyz acac MD (bundled)", "bundled:acac", None, {}),
        ("ASE SQLite oxides (bundled)", "bundled:oxides", None, {}),
        ("adsorbates JSON (bundled)", "bundled:adsorbates", None, {}),
    ]
    lmdb_dir = WORK / "oc_lmdb_ethanol"
    if not (lmdb_dir / "data.0001.lmdb").exists():
        write_oc_lmdb(lmdb_dir, args.lmdb_records)
    cases.append((f"OC LMDB, ethanol x {args.lmdb_records} (generated)", str(lmdb_dir), "oc-lmdb", {}))
    npz = WORK / "rmd17_ethanol.npz"
    if not npz.exists():
        write_rmd17(npz, 100_000)
    cases.append(("rMD17 npz, 100k frames (generated)", str(npz), "rmd17", {}))
    aselmdb = WORK / "ethanol.aselmdb"
    if not aselmdb.exists():
        from atomsift.data.readers.asedb import write_aselmdb

        src = open_dataset("bundled:ethanol")
        write_aselmdb(aselmdb, (src[i] for i in range(len(src))), metadata={}, total=len(src), progress=False)
    cases.append(("ASE-LMDB ethanol (converted)", str(aselmdb), "aselmdb", {}))
    cases += generated_cases(WORK)

    print(f"# atomsift reading benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}")
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.machine(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    print(f"# {cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, h5py {h5py.__version__}")
    print()
    print(f"| {'reader / file':<44} | {'format':<15} | {'records':>8} | {'atoms/rec':>9} | {'records/s':>10} |")
    print(f"|{'-' * 46}|{'-' * 17}|{'-' * 10}|{'-' * 11}|{'-' * 12}|")
    for label, path, fmt, opts in cases:
        ds = open_dataset(path, format=fmt, **opts)
        r, _, atoms = rate(ds, limit=20_000)
        print(f"| {label:<44} | {ds.format_name:<15} | {len(ds):>8} | {atoms:>9.1f} | {r:>10.0f} |", flush=True)

    ours, theirs = unpickle_comparison(lmdb_dir)
    print()
    print("Decoding the OC LMDB values (pickled torch_geometric Data of ethanol), side by side:")
    print("| decoder | values/s |")
    print("|---|---|")
    print(f"| atomsift pyg_pickle.loads (no torch_geometric) | {ours:.0f} |")
    print(f"| pickle.loads with torch_geometric, tensors to numpy | {theirs:.0f} |")
    print(f"| ratio | {ours / theirs:.1f}x |")

    large = WORK / f"ani1x_layout_{args.large_gb:g}GB.h5"
    if not large.exists():
        t0 = time.perf_counter()
        _, n_conf = write_large_ani1x(large, args.large_gb)
        print(
            f"\n(generated {large.name}: {large.stat().st_size / 1e9:.2f} GB, {n_conf} conformers, "
            f"{time.perf_counter() - t0:.0f} s)"
        )
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        res = pool.apply(iterate_large, (large, args.large_limit))
    print()
    print(f"Large ANI-1x-layout file: {large.stat().st_size / 1e9:.2f} GB")
    print(
        "| records read | sequential rec/s | random rec/s | RSS after open MB | RSS halfway MB | RSS peak, sequential pass MB | RSS after random reads MB |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {res['n']} | {res['seq']:.0f} | {res['random']:.0f} | {res['rss_start']:.0f} | {res['rss_mid']:.0f} "
        f"| {res['rss_peak']:.0f} | {res['rss_end']:.0f} |"
    )


if __name__ == "__main__":
    main()
