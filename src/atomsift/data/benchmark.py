"""The bundled mini-benchmark: four small upstream sets in the roles of the paper's four pretraining
domains and a QM9 downstream task, made by `atomsift data make-benchmark` (docs/benchmark.md).

    bench-organic    QM9 molecules, Gaussian-rattled, GFN2-xTB energy + forces        (ANI-1x's role)
    bench-reactive   GFN2-xTB Langevin MD at high temperature of other QM9 molecules   (Transition-1x's role)
    bench-catalysis  bundled adsorbates on fcc(111) slabs, periodic GFN1-xTB labels    (OC20's role)
    bench-qm9        further QM9 molecules at their B3LYP geometries, QM9's U0, gap... (downstream task)

The oxides' role (OC22) is played by `bundled:oxides` (real PBE data): nothing is generated for it.
One seeded permutation of the QM9 rows hands out molecules to organic, then reactive, then qm9, each row
at most once; a downstream molecule whose bond graph equals that of an upstream molecule is passed over
too. Structures whose xTB calculation fails are passed over and recorded in provenance.json.
"""

from __future__ import annotations

import json
import platform
import zlib
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from atomsift import __version__
from atomsift.data._benchmark_labels import (
    bond_graph_hash,
    extxyz_frame,
    langevin_frames,
    one_openmp_thread,
    require_modules,
    sha256_file,
    single_point,
    xtb_calculator,
    xtb_errors,
)
from atomsift.errors import DataError
from atomsift.progress import progress_bar

FILES = {
    "bench-organic": "organic_gfn2.xyz",
    "bench-reactive": "reactive_md_gfn2.xyz",
    "bench-catalysis": "catalysis_gfn1.xyz",
    "bench-qm9": "qm9_downstream.xyz",
}
"""Bundled name -> file written in the output folder."""
PROVENANCE_FILE = "provenance.json"
QM9_TARGETS_KEPT = ("U0", "U0_atom", "gap", "homo", "lumo")
"""QM9 targets written per downstream molecule (eV), read back as targets of these names."""


@dataclass(frozen=True)
class BenchmarkSizes:
    """How many structures each set gets."""

    n_organic: int = 600
    n_reactive_molecules: int = 20
    frames_per_molecule: int = 20
    n_catalysis: int = 350
    n_qm9: int = 600

    def check(self) -> None:
        from atomsift.errors import ConfigError

        for key, value in asdict(self).items():
            if value < 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be at least 1, got {value}")


@dataclass(frozen=True)
class LabelSettings:
    """Level of theory and sampling settings (lengths A, temperatures K, times fs)."""

    molecule_method: str = "GFN2-xTB"
    catalysis_method: str = "GFN1-xTB"  # tblite's periodic GFN2 did not converge on these slabs
    accuracy: float = 1.0
    electronic_temperature_k: float = 300.0
    catalysis_electronic_temperature_k: float = 1000.0  # Fermi smearing for the metals; 300 K failed SCF on some
    max_iterations: int = 250
    rattle_sigma_a: float = 0.02  # at 0.03 A a compressed C≡N bond gave 25 eV/A (docs/benchmark.md)
    md_temperature_k: float = 1500.0
    md_timestep_fs: float = 0.5
    md_friction_per_fs: float = 0.01
    md_stride: int = 20


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def open_qm9_source(qm9: str | Path | None) -> tuple[Any, dict[str, Any]]:
    """(QM9 dataset, description) of the installed qm9pack wheel (None) or of a QM9 copy atomsift reads."""
    from atomsift.data.registry import open_dataset

    if qm9 is None:
        ds = open_dataset("qm9pack", format="qm9pack")
        return ds, {"source": "qm9pack", "qm9pack_version": _version("qm9pack"), "n_molecules": len(ds)}
    path = Path(qm9)
    ds = open_dataset(path)
    if "U0" not in ds[0].targets:
        raise DataError(
            f"the --qm9 source ({ds.format_name}) gives no QM9 targets (U0 missing)",
            file=path,
            fix="point --qm9 to QM9 files (raw dsgdb9nsd xyz, qm9pack CSVs or PyG's qm9_v3.pt), or leave it out",
        )
    described = {"source": path.name, "format": ds.format_name, "n_molecules": len(ds)}
    if path.is_file():
        described["sha256"] = sha256_file(path)
    return ds, described


class _Writer:
    """Frames appended to one extxyz text (written at the end, atomically)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.elements: set[int] = set()
        self.n_atoms = 0
        self.max_force = 0.0

    def add(self, numbers: np.ndarray, positions: np.ndarray, **kw: Any) -> None:
        self.parts.append(extxyz_frame(numbers, positions, **kw))
        self.elements.update(int(z) for z in numbers)
        self.n_atoms += len(numbers)
        if kw.get("forces") is not None:
            self.max_force = max(self.max_force, float(np.linalg.norm(kw["forces"], axis=1).max()))

    def summary(self) -> dict[str, Any]:
        from ase.data import chemical_symbols

        out = {
            "n_structures": len(self.parts),
            "n_atoms": self.n_atoms,
            "elements": [chemical_symbols[z] for z in sorted(self.elements)],
        }
        if self.max_force:
            out["max_force_norm_ev_per_a"] = round(self.max_force, 3)
        return out


def _atoms(rec: Any) -> Any:
    from ase import Atoms

    if rec.cell is not None:
        return Atoms(numbers=rec.numbers, positions=rec.positions, cell=rec.cell, pbc=True)
    return Atoms(numbers=rec.numbers, positions=rec.positions)


class _Rows:
    """QM9 rows in the seeded order, handed out once each."""

    def __init__(self, ds: Any, seed: int) -> None:
        self.ds = ds
        self.order = np.random.default_rng(np.random.SeedSequence([seed, 0])).permutation(len(ds))
        self.next = 0

    def take(self, what: str) -> Any:
        if self.next >= len(self.order):
            raise DataError(
                f"the QM9 source ran out of molecules while choosing the {what} set "
                f"({len(self.order)} molecules in all, every one used at most once)",
                file=str(getattr(self.ds, "path", "qm9")),
                fix="ask for fewer structures (--n-organic, --n-reactive-molecules, --n-qm9) or use the full QM9",
            )
        rec = self.ds[int(self.order[self.next])]
        self.next += 1
        return rec


def _organic(rows: _Rows, n: int, s: LabelSettings, seed: int, progress: bool) -> tuple[_Writer, dict]:
    calc = xtb_calculator(
        s.molecule_method,
        accuracy=s.accuracy,
        electronic_temperature=s.electronic_temperature_k,
        max_iterations=s.max_iterations,
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    out, used, failed, graphs = _Writer(), [], [], []
    with progress_bar(total=n, desc="bench-organic (GFN2-xTB)", unit="struct", disable=not progress) as bar:
        while len(used) < n:
            rec = rows.take("bench-organic")
            pos = rec.positions + rng.normal(0.0, s.rattle_sigma_a, rec.positions.shape)
            atoms = _atoms(rec)
            atoms.positions = pos
            try:
                energy, forces = single_point(atoms, calc)
            except xtb_errors() as exc:
                failed.append({"id": rec.id, "error": str(exc)[:200]})
                continue
            out.add(rec.numbers, pos, forces=forces, energy=energy, info={"qm9_id": rec.id})
            used.append(rec.id)
            graphs.append(bond_graph_hash(rec.numbers, rec.positions))
            bar.update(1)
    return out, {"qm9_ids": used, "failed": failed, "_graphs": graphs}


def _reactive(
    rows: _Rows, n_mol: int, n_frames: int, s: LabelSettings, seed: int, progress: bool
) -> tuple[_Writer, dict]:
    calc = xtb_calculator(
        s.molecule_method,
        accuracy=s.accuracy,
        electronic_temperature=s.electronic_temperature_k,
        max_iterations=s.max_iterations,
    )
    out, used, failed, graphs = _Writer(), [], [], []
    with progress_bar(
        total=n_mol * n_frames, desc="bench-reactive (GFN2-xTB MD)", unit="struct", disable=not progress
    ) as bar:
        while len(used) < n_mol:
            rec = rows.take("bench-reactive")
            rng = np.random.default_rng(np.random.SeedSequence([seed, 2, zlib.crc32(rec.id.encode())]))
            try:
                traj = langevin_frames(
                    _atoms(rec),
                    calc,
                    temperature_k=s.md_temperature_k,
                    timestep_fs=s.md_timestep_fs,
                    friction_per_fs=s.md_friction_per_fs,
                    n_frames=n_frames,
                    stride=s.md_stride,
                    rng=rng,
                )
            except xtb_errors() as exc:
                failed.append({"id": rec.id, "error": str(exc)[:200]})
                continue
            for pos, energy, forces in zip(traj.positions, traj.energies, traj.forces):
                out.add(rec.numbers, pos, forces=forces, energy=energy, info={"qm9_id": rec.id})
            used.append(rec.id)
            graphs.append(bond_graph_hash(rec.numbers, rec.positions))
            bar.update(n_frames)
    return out, {"qm9_ids": used, "failed": failed, "_graphs": graphs, "md_steps_kept": traj.steps if used else []}


def _qm9_downstream(rows: _Rows, n: int, upstream_graphs: set[str]) -> tuple[_Writer, dict]:
    out, used, passed_over = _Writer(), [], []
    while len(used) < n:
        rec = rows.take("bench-qm9")
        if bond_graph_hash(rec.numbers, rec.positions) in upstream_graphs:
            passed_over.append(rec.id)
            continue
        info: dict[str, Any] = {name: rec.targets[name] for name in QM9_TARGETS_KEPT if name in rec.targets}
        info["qm9_id"] = rec.id
        out.add(rec.numbers, rec.positions, info=info)
        used.append(rec.id)
    return out, {"qm9_ids": used, "passed_over_same_bond_graph_as_upstream": passed_over}


def _catalysis(n: int, s: LabelSettings, seed: int, progress: bool) -> tuple[_Writer, dict]:
    from atomsift.data.bundled import resolve_bundled
    from atomsift.data.registry import open_dataset

    path, fmt, options = resolve_bundled("adsorbates")
    ds = open_dataset(path, format=fmt, **options)
    calc = xtb_calculator(
        s.catalysis_method,
        accuracy=s.accuracy,
        electronic_temperature=s.catalysis_electronic_temperature_k,
        max_iterations=s.max_iterations,
    )
    order = np.random.default_rng(np.random.SeedSequence([seed, 3])).permutation(len(ds))
    out, used, failed = _Writer(), [], []
    with progress_bar(
        total=n, desc=f"bench-catalysis ({s.catalysis_method}, periodic)", unit="struct", disable=not progress
    ) as bar:
        for row in order:
            if len(used) == n:
                break
            rec = ds[int(row)]
            try:
                energy, forces = single_point(_atoms(rec), calc)
            except xtb_errors() as exc:
                failed.append({"id": rec.id, "error": str(exc)[:200]})
                continue
            info = {
                "source_id": rec.id,
                "metal": rec.info["metal"],
                "adsorbate": rec.info["adsorbate"],
                "dft_adsorption_energy": rec.energy,
            }
            out.add(rec.numbers, rec.positions, forces=forces, energy=energy, cell=rec.cell, info=info)
            used.append(rec.id)
            bar.update(1)
    if len(used) < n:
        raise DataError(
            f"only {len(used)} of the {len(ds)} bundled adsorbate structures could be labelled; {n} were asked for",
            file=path,
            fix="ask for fewer with --n-catalysis",
        )
    source = {"bundled": "adsorbates", "file": path.name, "sha256": sha256_file(path)}
    return out, {"source": source, "source_ids": used, "failed": failed}


def make_benchmark(
    out: str | Path,
    *,
    seed: int = 0,
    sizes: BenchmarkSizes | None = None,
    settings: LabelSettings | None = None,
    qm9: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the four benchmark files and provenance.json into the folder `out` (which must exist).

    Deterministic for a given seed, sizes, settings, QM9 source and tblite build. Returns the provenance.
    """
    sizes = sizes or BenchmarkSizes()
    sizes.check()
    settings = settings or LabelSettings()
    require_modules(["tblite"] + (["qm9pack"] if qm9 is None else []))
    from atomsift.settings import write_text_atomic

    out = Path(out)
    ds, source = open_qm9_source(qm9)
    rows = _Rows(ds, seed)
    # One OpenMP thread for tblite even where the runtime started before OMP_NUM_THREADS was set (torch
    # imported first, as in a test process): otherwise the labels' last digits depend on the thread count.
    with one_openmp_thread():
        organic, organic_meta = _organic(rows, sizes.n_organic, settings, seed, progress)
        reactive, reactive_meta = _reactive(
            rows, sizes.n_reactive_molecules, sizes.frames_per_molecule, settings, seed, progress
        )
        upstream_graphs = set(organic_meta.pop("_graphs")) | set(reactive_meta.pop("_graphs"))
        downstream, downstream_meta = _qm9_downstream(rows, sizes.n_qm9, upstream_graphs)
        catalysis, catalysis_meta = _catalysis(sizes.n_catalysis, settings, seed, progress)

    mol_labels = {
        "program": "tblite",
        "method": settings.molecule_method,
        "accuracy": settings.accuracy,
        "electronic_temperature_k": settings.electronic_temperature_k,
        "units": {"energy": "eV", "forces": "eV/A", "positions": "A"},
    }
    sets: dict[str, dict[str, Any]] = {
        "bench-organic": {
            "role": "organic molecules (ANI-1x's role)",
            "structures": f"QM9 B3LYP geometries + Gaussian noise sigma {settings.rattle_sigma_a} A per coordinate",
            "labels": mol_labels,
            **organic_meta,
        },
        "bench-reactive": {
            "role": "reactive / high-energy configurations (Transition-1x's role)",
            "structures": "Langevin MD (ASE) from QM9 B3LYP geometries, velocities drawn at the MD temperature",
            "labels": mol_labels,
            "md": {
                "temperature_k": settings.md_temperature_k,
                "timestep_fs": settings.md_timestep_fs,
                "friction_per_fs": settings.md_friction_per_fs,
                "steps_per_molecule": sizes.frames_per_molecule * settings.md_stride,
                "stride": settings.md_stride,
                "frames_per_molecule": sizes.frames_per_molecule,
            },
            **reactive_meta,
        },
        "bench-catalysis": {
            "role": "catalysis, adsorbates on metal surfaces (OC20's role)",
            "structures": "bundled:adsorbates geometries (DFT, Xu & Kitchin 2014) unchanged, periodic in 3D",
            "labels": {
                **mol_labels,
                "method": settings.catalysis_method,
                "electronic_temperature_k": settings.catalysis_electronic_temperature_k,
                "periodic": "3D, Gamma point",
            },
            **catalysis_meta,
        },
        "bench-qm9": {
            "role": "downstream task: QM9 property prediction",
            "structures": "QM9 B3LYP/6-31G(2df,p) geometries",
            "labels": {"source": "QM9 reference values", "targets": list(QM9_TARGETS_KEPT), "unit": "eV"},
            **downstream_meta,
        },
    }
    for name, writer in (
        ("bench-organic", organic),
        ("bench-reactive", reactive),
        ("bench-catalysis", catalysis),
        ("bench-qm9", downstream),
    ):
        path = out / FILES[name]
        write_text_atomic(path, "".join(writer.parts))
        sets[name] = {"file": FILES[name], "sha256": sha256_file(path), **writer.summary(), **sets[name]}
    provenance = {
        "generator": "atomsift data make-benchmark",
        "atomsift_version": __version__,
        "seed": seed,
        "sizes": asdict(sizes),
        "settings": asdict(settings),
        "qm9_source": source,
        "software": {
            "tblite": _version("tblite"),
            "ase": _version("ase"),
            "numpy": _version("numpy"),
            "python": platform.python_version(),
        },
        "oxides": "OC22's role is played by bundled:oxides (VASP PBE, unchanged; see bundled/PROVENANCE.md)",
        "sets": sets,
    }
    write_text_atomic(out / PROVENANCE_FILE, json.dumps(provenance, indent=1) + "\n")
    return provenance
