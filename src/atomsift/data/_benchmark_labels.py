"""Labelling helpers of the mini-benchmark (`atomsift.data.benchmark`): tblite xTB single points and
Langevin MD, a deterministic extxyz writer and a bond-graph fingerprint for the disjointness check.

tblite is imported only inside `xtb_calculator`, after OMP_NUM_THREADS is set (see there).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols, covalent_radii

from atomsift.errors import ConfigError

BENCHMARK_EXTRA = 'pip install "atomsift[benchmark]"'


def missing_modules(names: Iterable[str]) -> list[str]:
    """The modules of `names` that cannot be imported (found without importing them)."""
    import importlib.util

    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_modules(names: Iterable[str]) -> None:
    """ConfigError naming the missing packages of the benchmark generator and the extra that installs them."""
    missing = missing_modules(names)
    if missing:
        raise ConfigError(
            f"making the benchmark needs the package(s) {', '.join(missing)}, which are not installed "
            "(tblite labels the structures with GFN-xTB; qm9pack holds the QM9 molecules they start from)",
            fix=f"{BENCHMARK_EXTRA} (or pass --qm9 PATH to a QM9 copy atomsift reads instead of qm9pack)",
        )


def xtb_calculator(method: str, *, accuracy: float, electronic_temperature: float, max_iterations: int) -> Any:
    """An ASE calculator of tblite (`method` 'GFN2-xTB' / 'GFN1-xTB'; energy eV, forces eV/A), quiet."""
    # tblite's OpenMP threads: with the default (one per core) it ran ~1000x slower here on these small
    # systems than with one thread. The OpenMP runtime reads the variable when tblite's library loads, so it
    # is set before the first `import tblite` (this function is the only place that imports it).
    os.environ["OMP_NUM_THREADS"] = "1"
    from tblite.ase import TBLite

    return TBLite(
        method=method,
        accuracy=accuracy,
        electronic_temperature=electronic_temperature,
        max_iterations=max_iterations,
        verbosity=0,
    )


def one_openmp_thread() -> Any:
    """A context in which every loaded OpenMP runtime (tblite's, torch's) runs one thread (threadpoolctl).

    tblite is imported first, so its runtime is loaded and limited too."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import tblite.ase  # noqa: F401  (loads tblite's OpenMP runtime before the limit is applied)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def xtb_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a failed tblite calculation raises (SCF not converged, ...); its ASE calculator wraps
    tblite's own errors in ASE's CalculationFailed."""
    from ase.calculators.calculator import CalculationFailed
    from tblite.exceptions import TBLiteRuntimeError, TBLiteValueError

    return (CalculationFailed, TBLiteRuntimeError, TBLiteValueError)


def single_point(atoms: Any, calc: Any) -> tuple[float, np.ndarray]:
    """(energy eV, forces (N, 3) eV/A) of `atoms` with `calc`; tblite's errors propagate."""
    atoms.calc = calc
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(), dtype=np.float64)
    atoms.calc = None
    return energy, forces


@dataclass
class MDFrames:
    """Frames kept from one trajectory: positions (F, N, 3) A, energies (F,) eV, forces (F, N, 3) eV/A."""

    positions: list[np.ndarray] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    forces: list[np.ndarray] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)


def langevin_frames(
    atoms: Any,
    calc: Any,
    *,
    temperature_k: float,
    timestep_fs: float,
    friction_per_fs: float,
    n_frames: int,
    stride: int,
    rng: np.random.Generator,
) -> MDFrames:
    """Langevin MD from `atoms` (velocities drawn at `temperature_k`), keeping every `stride`-th step after
    step 0 until `n_frames` frames: the labels are the calculator's energy and forces at those steps."""
    from ase import units
    from ase.md import velocitydistribution as vd
    from ase.md.langevin import Langevin

    atoms = atoms.copy()
    atoms.calc = calc
    # newer ASE names it thermalize_momenta and deprecates MaxwellBoltzmannDistribution
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=temperature_k, rng=rng)
    vd.Stationary(atoms)  # no net momentum at the start (the thermostat's noise may add a little)
    dyn = Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_k,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    out = MDFrames()
    for k in range(1, n_frames + 1):
        dyn.run(stride)
        out.positions.append(atoms.get_positions().copy())
        out.energies.append(float(atoms.get_potential_energy()))
        out.forces.append(np.array(atoms.get_forces(), dtype=np.float64))
        out.steps.append(k * stride)
    atoms.calc = None
    return out


# -- extxyz -----------------------------------------------------------------------------------------


def _num(x: float) -> str:
    text = f"{x:.8f}"
    return "0.00000000" if text == "-0.00000000" else text


def _info_text(key: str, value: Any) -> str:
    if isinstance(value, str):
        if not value or any(c in value for c in ' "=,'):
            raise ValueError(f"extxyz info value {value!r} of '{key}' needs quoting; use a plain token")
        return f"{key}={value}"
    return f"{key}={_num(float(value))}"


def extxyz_frame(
    numbers: np.ndarray,
    positions: np.ndarray,
    *,
    forces: np.ndarray | None = None,
    energy: float | None = None,
    cell: np.ndarray | None = None,
    info: dict[str, Any] | None = None,
) -> str:
    """One extended-XYZ frame (8 decimals; energy eV, positions A, forces eV/A); periodic when `cell` is given."""
    props = "species:S:1:pos:R:3" + (":forces:R:3" if forces is not None else "")
    head = []
    if cell is not None:
        head.append('Lattice="' + " ".join(_num(v) for v in np.asarray(cell, float).reshape(9)) + '"')
    head.append(f"Properties={props}")
    if energy is not None:
        head.append(f"energy={_num(energy)}")
    head += [_info_text(k, v) for k, v in (info or {}).items()]
    head.append('pbc="T T T"' if cell is not None else 'pbc="F F F"')
    lines = [str(len(numbers)), " ".join(head)]
    for k, z in enumerate(numbers):
        cols = [chemical_symbols[int(z)], *(_num(v) for v in positions[k])]
        if forces is not None:
            cols += [_num(v) for v in forces[k]]
        lines.append(" ".join(cols))
    return "\n".join(lines) + "\n"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- bond graphs ------------------------------------------------------------------------------------


def bond_graph_hash(numbers: np.ndarray, positions: np.ndarray, *, scale: float = 1.2, rounds: int = 4) -> str:
    """A fingerprint of a molecule's bond graph: atoms bonded when closer than `scale` x the sum of their
    covalent radii, then `rounds` of Weisfeiler-Lehman relabelling from the element symbols, hashed.

    Equal molecules (any atom order, small distortions) give equal strings; different molecules almost
    always differ (stereoisomers share one graph, so they count as the same molecule here).
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.float64)
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    radii = covalent_radii[numbers]
    bonded = (dist < scale * (radii[:, None] + radii[None, :])) & ~np.eye(len(numbers), dtype=bool)
    labels = [chemical_symbols[int(z)] for z in numbers]
    neighbours = [np.flatnonzero(row) for row in bonded]
    for _ in range(rounds):
        labels = [
            hashlib.sha1((labels[i] + "|" + ",".join(sorted(labels[j] for j in nb))).encode()).hexdigest()[:16]
            for i, nb in enumerate(neighbours)
        ]
    return hashlib.sha1(";".join(sorted(labels)).encode()).hexdigest()
