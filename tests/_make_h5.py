"""Writers of small (and, for benchmarks, large) HDF5 files in the exact ANI-1x, Transition-1x and
SPICE release layouts (docs/formats.md). Values are random but shaped and typed like the releases.

    from _make_h5 import write_synthetic_ani1x
    write_synthetic_ani1x("big.h5", target_bytes=1 << 30)   # ~1 GB in the ANI-1x layout, seconds
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ANI_ELEMENTS = (("C", 6), ("H", 1), ("N", 7), ("O", 8))
ANI_LEVELS_WITH_FORCES = ("wb97x_dz", "wb97x_tz")
ANI_ENERGY_ONLY = ("ccsd(t)_cbs", "hf_dz", "hf_tz", "hf_qz")


# -- ANI-1x ------------------------------------------------------------------------------------
def ani1x_formula(counts: Mapping[str, int]) -> str:
    """Group name with explicit counts in C, H, N, O order, e.g. {'C': 1, 'H': 4} -> 'C1H4N0O0'."""
    return "".join(f"{s}{int(counts.get(s, 0))}" for s, _ in ANI_ELEMENTS)


def ani1x_group(
    rng: np.random.Generator,
    counts: Mapping[str, int],
    n_conf: int,
    *,
    nan_energy: Iterable[int] = (),
    nan_forces: Iterable[int] = (),
    full: bool = True,
) -> dict[str, np.ndarray]:
    """Arrays of one ANI-1x formula group (release dtypes): atomic_numbers uint8, coordinates
    (Nc, Na, 3) float32 A, `<level>.energy` (Nc,) float64 Hartree, `<level>.forces` float32 Hartree/A.

    `nan_energy` / `nan_forces` put NaN into those conformers of wb97x_dz. `full=False` writes only
    the wb97x_dz level (smaller, faster files for benchmarks).
    """
    numbers = np.concatenate([np.full(int(counts.get(s, 0)), z, dtype=np.uint8) for s, z in ANI_ELEMENTS])
    na = numbers.shape[0]
    coords = rng.standard_normal((n_conf, na, 3), dtype=np.float32) * np.float32(1.5)
    out: dict[str, np.ndarray] = {"atomic_numbers": numbers, "coordinates": coords}
    base = (
        -37.8 * float((numbers == 6).sum())
        - 0.5 * float((numbers == 1).sum())
        - 54.6 * float((numbers == 7).sum())
        - 75.0 * float((numbers == 8).sum())
    )
    levels = ANI_LEVELS_WITH_FORCES if full else ANI_LEVELS_WITH_FORCES[:1]
    for level in levels:
        out[f"{level}.energy"] = base + 0.01 * rng.standard_normal(n_conf)
        out[f"{level}.forces"] = rng.standard_normal((n_conf, na, 3), dtype=np.float32) * np.float32(0.02)
    if full:
        for level in ANI_ENERGY_ONLY:
            energy = base + 0.01 * rng.standard_normal(n_conf)
            energy[1::2] = np.nan  # like the release: higher levels exist for a few conformers only
            out[f"{level}.energy"] = energy
        out["wb97x_dz.dipole"] = np.full((n_conf, 3), np.nan, dtype=np.float32)
    for i in nan_energy:
        out["wb97x_dz.energy"][i] = np.nan
    for i in nan_forces:
        out["wb97x_dz.forces"][i, 0, 1] = np.nan
    return out


def write_ani1x(path: str | Path, groups: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]]):
    """Write formula groups {name: {key: array}} (or an iterable of (name, arrays) pairs, so huge
    files can be streamed group by group) as contiguous, uncompressed datasets like the release."""
    items = groups.items() if isinstance(groups, Mapping) else groups
    with h5py.File(path, "w") as f:
        for name, arrays in items:
            group = f.create_group(name)
            for key, value in arrays.items():
                group.create_dataset(key, data=value)
    return Path(path)


def write_synthetic_ani1x(
    path: str | Path,
    *,
    target_bytes: int = 1 << 30,
    conformers_per_group: int = 2000,
    nan_fraction: float = 0.001,
    seed: int = 0,
    full: bool = False,
) -> dict[str, int]:
    """Stream random formula groups (CHNO, 1-10 heavy atoms, ~15 atoms on average, like ANI-1x) into
    `path` until about `target_bytes` of array data are written. Returns counts {'groups',
    'conformers', 'nan', 'bytes'}.

    Each formula is used once (ANI-1x has one group per formula). There are 2,014 formulas, about
    1.4 GB at the default 2,000 conformers per group (wb97x_dz only); raise `conformers_per_group`
    for bigger files."""
    rng = np.random.default_rng(seed)
    stats = {"groups": 0, "conformers": 0, "nan": 0, "bytes": 0}
    formulas = [
        {"C": c, "H": h, "N": n, "O": o}
        for c in range(9)
        for n in range(5)
        for o in range(5)
        if 1 <= c + n + o <= 10
        for h in range(1, 2 * (c + n) + 3)
    ]
    order = rng.permutation(len(formulas))

    def generate():
        for k in order:
            if stats["bytes"] >= target_bytes:
                return
            counts = formulas[k]
            n_conf = int(rng.integers(conformers_per_group // 2, conformers_per_group * 3 // 2 + 1))
            n_nan = int(rng.binomial(n_conf, nan_fraction))
            nan_idx = rng.choice(n_conf, size=n_nan, replace=False)
            arrays = ani1x_group(rng, counts, n_conf, nan_energy=nan_idx[::2], nan_forces=nan_idx[1::2], full=full)
            stats["groups"] += 1
            stats["conformers"] += n_conf
            stats["nan"] += n_nan
            stats["bytes"] += sum(a.nbytes for a in arrays.values())
            yield ani1x_formula(counts), arrays
        raise ValueError(f"ran out of formulas after {stats['bytes']} bytes; raise conformers_per_group")

    write_ani1x(path, generate())
    return stats


# -- Transition-1x -----------------------------------------------------------------------------
T1X_ENERGY = "wB97x_6-31G(d).energy"
T1X_FORCES = "wB97x_6-31G(d).forces"


def t1x_reaction(rng: np.random.Generator, numbers: Iterable[int], n_frames: int) -> dict[str, np.ndarray]:
    """Path arrays of one reaction: atomic_numbers (N,) int64, positions (M, N, 3) float64 A,
    energy (M,) float64 eV, forces (M, N, 3) float64 eV/A."""
    z = np.asarray(list(numbers), dtype=np.int64)
    n = z.shape[0]
    return {
        "atomic_numbers": z,
        "positions": rng.standard_normal((n_frames, n, 3)) * 1.5,
        T1X_ENERGY: -1000.0 * n + rng.standard_normal(n_frames),
        T1X_FORCES: rng.standard_normal((n_frames, n, 3)) * 0.5,
    }


def write_transition1x(
    path: str | Path,
    reactions: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
    splits: Mapping[str, Iterable[str]] | None = None,
):
    """Write {formula: {rxn: arrays}} under /data, each reaction with `reactant`, `transition_state`
    and `product` subgroups (frames 0, argmax energy and -1; leading dim 1; plus `hash`), and the
    split groups {split: [formula, ...]} as SoftLinks /<split>/<formula> -> /data/<formula>."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for formula, rxns in reactions.items():
            fgroup = data.create_group(formula)
            for rxn, arrays in rxns.items():
                group = fgroup.create_group(rxn)
                for key, value in arrays.items():
                    group.create_dataset(key, data=value)
                energies = np.asarray(arrays[T1X_ENERGY])
                picks = {"reactant": 0, "transition_state": int(np.argmax(energies)), "product": len(energies) - 1}
                for sub, frame in picks.items():
                    sgroup = group.create_group(sub)
                    sgroup.create_dataset("atomic_numbers", data=arrays["atomic_numbers"])
                    for key in ("positions", T1X_ENERGY, T1X_FORCES):
                        sgroup.create_dataset(key, data=np.asarray(arrays[key])[frame : frame + 1])
                    sgroup.create_dataset("hash", data=np.array([f"{formula}-{rxn}-{sub}".encode()]))
        for split, formulas in (splits or {}).items():
            sgroup = f.create_group(split)
            for formula in formulas:
                sgroup[formula] = h5py.SoftLink(f"/data/{formula}")
    return Path(path)


# -- SPICE -------------------------------------------------------------------------------------
SPICE_UNITS = {
    "conformations": "bohr",
    "dft_total_energy": "hartree",
    "dft_total_gradient": "hartree/bohr",
    "formation_energy": "hartree",
}


def spice_molecule(
    rng: np.random.Generator,
    numbers: Iterable[int],
    n_conf: int,
    *,
    subset: str = "SPICE Test Set v1.0",
    smiles: str = "[H:1][H:2]",
) -> dict[str, np.ndarray]:
    """Arrays of one SPICE molecule (release dtypes; bohr, hartree, hartree/bohr)."""
    z = np.asarray(list(numbers), dtype=np.int16)
    n = z.shape[0]
    return {
        "atomic_numbers": z,
        "conformations": rng.standard_normal((n_conf, n, 3), dtype=np.float32) * np.float32(3.0),
        "dft_total_energy": -40.0 * n + 0.01 * rng.standard_normal(n_conf),
        "dft_total_gradient": rng.standard_normal((n_conf, n, 3), dtype=np.float32) * np.float32(0.01),
        "formation_energy": -0.1 * n + 0.01 * rng.standard_normal(n_conf),
        "mbis_charges": rng.standard_normal((n_conf, n, 1), dtype=np.float32),
        "subset": np.array([subset.encode()], dtype=object),
        "smiles": np.array([smiles.encode()], dtype=object),
    }


def write_spice(
    path: str | Path,
    molecules: Mapping[str, Mapping[str, np.ndarray]],
    units: Mapping[str, str | None] | None = None,
):
    """Write {name: arrays} as SPICE groups; `units` overrides attrs['units'] per key (None = omit)."""
    unit_map = {**SPICE_UNITS, **(units or {})}
    string_dtype = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        for name, arrays in molecules.items():
            group = f.create_group(name)
            for key, value in arrays.items():
                if key in ("subset", "smiles"):
                    group.create_dataset(key, data=value, dtype=string_dtype)
                    continue
                dset = group.create_dataset(key, data=value)
                unit = unit_map.get(key, "elementary_charge" if key == "mbis_charges" else None)
                if unit is not None:
                    dset.attrs["units"] = unit
    return Path(path)


def truncate_copy(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """Copy the first `keep` fraction of `src` to `dst` (a download that stopped half-way)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)
