"""Writers of tiny Open Catalyst files in the exact release layouts (LMDB of PyG Data, S2EF extxyz+txt)."""

from __future__ import annotations

import io
import lzma
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.data.bundled import bundled_dir

# the real OC20 frame shipped with the package (bundled:oc20-frame, provenance in its PROVENANCE.md),
# so these writers need no data from outside the repository
ADSLAB_JSON = bundled_dir() / "oc20_adslab_frame.json"


def adslab_atoms():
    """The real OC20 adslab frame (34 atoms, *CO on Al8Cu8Se16) as ase.Atoms with energy and forces."""
    from ase.db import connect

    row = next(connect(str(ADSLAB_JSON)).select())
    return row.toatoms()


def frames(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` realistic frames: the real adslab with jittered positions, energies and forces (float64)."""
    atoms = adslab_atoms()
    rng = np.random.default_rng(seed)
    fixed = np.zeros(len(atoms), dtype=bool)
    fixed[atoms.constraints[0].get_indices()] = True
    out = []
    for i in range(n):
        out.append(
            {
                "numbers": atoms.numbers.copy(),
                "positions": atoms.positions + rng.normal(0, 0.02, atoms.positions.shape),
                "cell": np.array(atoms.cell),
                "forces": atoms.get_forces() + rng.normal(0, 0.01, (len(atoms), 3)),
                "energy": float(atoms.get_potential_energy() + 0.1 * i),
                "tags": atoms.get_tags().astype(np.int64),
                "fixed": fixed,
                "sid": 2181546 + i % 3,
                "fid": 10 * i,
            }
        )
    return out


def pyg_data(frame: dict[str, Any], *, names: str = "old", energy: float | None = None):
    """A real torch_geometric Data laid out like the OC20/OC22 LMDB releases.

    names='old': y / force (older writer); names='new': energy / forces; names='none': no labels.
    """
    import torch
    from torch_geometric.data import Data

    n = len(frame["numbers"])
    d = Data(
        pos=torch.tensor(frame["positions"], dtype=torch.float32),
        cell=torch.tensor(frame["cell"], dtype=torch.float32).view(1, 3, 3),
        atomic_numbers=torch.tensor(frame["numbers"], dtype=torch.float32),
        natoms=n,
        tags=torch.tensor(frame["tags"], dtype=torch.long),
        fixed=torch.tensor(frame["fixed"], dtype=torch.float32),
        sid=frame["sid"],
        fid=frame["fid"],
    )
    e = frame["energy"] if energy is None else energy
    f = torch.tensor(frame["forces"], dtype=torch.float32)
    if names == "old":
        d.y, d.force = e, f
    elif names == "new":
        d.energy, d.forces = e, f
    return d


class _LegacyData:
    """Pickles as `torch_geometric.data.data.Data` with attributes directly in __dict__ (PyG < 2)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class _LegacyPickler(pickle._Pickler):  # type: ignore[name-defined]
    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _LegacyData:
            self.write(pickle.GLOBAL + b"torch_geometric.data.data\nData\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def legacy_pickle(frame: dict[str, Any], energy: float | None = None) -> bytes:
    """A PyG < 2 style pickle (no `_store`; None placeholders and `__num_nodes__` as PyG 1.x kept)."""
    import torch

    n = len(frame["numbers"])
    obj = _LegacyData(
        x=None,
        edge_index=torch.zeros(2, 0, dtype=torch.long),
        edge_attr=None,
        y=frame["energy"] if energy is None else energy,
        pos=torch.tensor(frame["positions"], dtype=torch.float32),
        normal=None,
        face=None,
        cell=torch.tensor(frame["cell"], dtype=torch.float32).view(1, 3, 3),
        atomic_numbers=torch.tensor(frame["numbers"], dtype=torch.float32),
        natoms=n,
        cell_offsets=torch.zeros(0, 3),
        force=torch.tensor(frame["forces"], dtype=torch.float32),
        fixed=torch.tensor(frame["fixed"], dtype=torch.float32),
        tags=torch.tensor(frame["tags"], dtype=torch.long),
        sid=frame["sid"],
        fid=frame["fid"],
        __num_nodes__=None,
    )
    buf = io.BytesIO()
    _LegacyPickler(buf, protocol=3).dump(obj)
    return buf.getvalue()


def write_lmdb(path: Path, values: list[Any], *, length_key: bool = True) -> Path:
    """A single-file LMDB like the release: keys b'0', b'1', ...; values pickled (bytes kept as is)."""
    import lmdb

    env = lmdb.open(str(path), subdir=False, map_size=1 << 28, meminit=False)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            txn.put(str(i).encode("ascii"), value if isinstance(value, bytes) else pickle.dumps(value))
        if length_key:
            txn.put(b"length", pickle.dumps(len(values)))
    env.sync()
    env.close()
    lock = Path(str(path) + "-lock")
    if lock.exists():
        lock.unlink()
    return path


def write_oc20_mapping(path: Path, sids: list[int], symbols: list[str]) -> Path:
    """oc20_data_mapping.pkl: {'random<sid>': {'bulk_symbols': ..., ...}}."""
    mapping = {
        f"random{s}": {"bulk_symbols": b, "bulk_id": k, "ads_symbols": "*CO", "miller_index": (1, 1, 1)}
        for k, (s, b) in enumerate(zip(sids, symbols))
    }
    path.write_bytes(pickle.dumps(mapping))
    return path


def write_oc22_metadata(path: Path, sids: list[int], symbols: list[str]) -> Path:
    """oc22_metadata.pkl: {sid: {'bulk_id': ..., 'bulk_symbols': ..., ...}}."""
    mapping = {
        int(s): {"bulk_id": f"mp-{k}", "bulk_symbols": b, "miller_index": (1, 0, 0), "ads_symbols": "*O"}
        for k, (s, b) in enumerate(zip(sids, symbols))
    }
    path.write_bytes(pickle.dumps(mapping))
    return path


def extxyz_text(frame: dict[str, Any]) -> str:
    """One frame in the OC20 S2EF raw layout (ase's extxyz writer format)."""
    from ase.data import chemical_symbols

    lattice = " ".join(f"{v:.8f}" for v in np.asarray(frame["cell"]).reshape(-1))
    lines = [
        str(len(frame["numbers"])),
        f'Lattice="{lattice}" Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 '
        f'energy={frame["energy"]:.8f} free_energy={frame["energy"] - 0.001:.8f} pbc="T T T"',
    ]
    for z, p, fx, t, f in zip(frame["numbers"], frame["positions"], frame["fixed"], frame["tags"], frame["forces"]):
        lines.append(
            f"{chemical_symbols[z]:<2} {p[0]:16.8f} {p[1]:16.8f} {p[2]:16.8f} {'F' if fx else 'T':>2} {t:8d} "
            f"{f[0]:16.8f} {f[1]:16.8f} {f[2]:16.8f}"
        )
    return "\n".join(lines) + "\n"


def write_s2ef_pair(
    directory: Path,
    k: int | str,
    frames_: list[dict[str, Any]],
    refs: list[float],
    *,
    compress: bool = True,
    txt_lines: list[str] | None = None,
) -> tuple[Path, Path]:
    """`<k>.extxyz(.xz)` + `<k>.txt(.xz)`; txt lines `random<sid>,frame<fid>,<ref>` unless given."""
    text = "".join(extxyz_text(f) for f in frames_).encode()
    lines = (
        txt_lines
        if txt_lines is not None
        else [f"random{f['sid']},frame{f['fid']},{r:.8f}" for f, r in zip(frames_, refs)]
    )
    txt = ("\n".join(lines) + "\n").encode()
    suffix = ".xz" if compress else ""
    xyz_path, txt_path = directory / f"{k}.extxyz{suffix}", directory / f"{k}.txt{suffix}"
    xyz_path.write_bytes(lzma.compress(text) if compress else text)
    txt_path.write_bytes(lzma.compress(txt) if compress else txt)
    return xyz_path, txt_path
