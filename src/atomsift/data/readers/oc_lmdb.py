"""Open Catalyst (OC20 S2EF / IS2RE, OC22 S2EF-Total) LMDB release: pickled PyG `Data` per key.

Layout (docs/formats.md "OC20 S2EF", "OC22 S2EF-Total"): a directory of single-file LMDBs `data.0000.lmdb`,
`data.0001.lmdb`, ... (or one `.lmdb` file). Keys are ASCII `b"0"`, `b"1"`, ...; an optional
`b"length"` key holds the pickled record count (else `env.stat()["entries"]`). The global index
runs over the files in sorted name order. Values are `pickle.dumps(torch_geometric.data.Data)`,
read here by `pyg_pickle` without torch_geometric (PyG 2.x `_store` objects and PyG < 2 objects).
Every pickle (values, the `length` key, the class mapping) is read with an allow-list of classes: one
that names anything else (e.g. a function that would run code) is refused with a DataError before it runs.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.readers._common import open_failed
from atomsift.data.readers._lmdb import LMDB_FIX, EnvPool
from atomsift.data.readers.pyg_pickle import RefusedGlobal, data_fields, is_pyg_data, load_plain, loads
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

_ENERGY_NAMES = ("energy", "y")  # newer writer, older writer
_FORCE_NAMES = ("forces", "force")
_EXTRA_TARGETS = ("y_init", "y_relaxed")  # IS2RE scalars, kept in Record.targets (eV)


class OCClassMap:
    """Class labels (`bulk_symbols`) by sid from `oc20_data_mapping.pkl` or `oc22_metadata.pkl`.

    OC20's mapping is keyed `"random<sid>"`; OC22's metadata by the integer sid. The kind is
    told from the keys. Only `{key: bulk_symbols}` is kept in memory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ConfigError(
                "class mapping file not found",
                file=self.path,
                fix="pass classes=<path to oc20_data_mapping.pkl or oc22_metadata.pkl>",
            )
        try:
            with open(self.path, "rb") as f:
                raw = load_plain(f)
        except RefusedGlobal as exc:
            raise refused(self.path, None, exc) from None
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise open_failed(self.path, exc, "the class mapping pickle") from None
        if not isinstance(raw, dict) or not raw:
            raise DataError(
                f"class mapping holds a {type(raw).__name__}, expected a non-empty dict keyed by sid",
                file=self.path,
                fix="pass oc20_data_mapping.pkl (keys 'random<sid>') or oc22_metadata.pkl (integer sids)",
            )
        first = next(iter(raw))
        if isinstance(first, str) and first.startswith("random"):
            self.kind = "oc20"
        elif isinstance(first, (int, np.integer)) or (isinstance(first, str) and first.isdigit()):
            self.kind = "oc22"
        else:
            raise DataError(
                f"cannot tell the mapping kind from its key {first!r}",
                file=self.path,
                fix="expected OC20 keys like 'random2181546' or OC22 integer sids",
            )
        self.labels: dict[Any, str] = {}
        for key, entry in raw.items():
            symbols = entry.get("bulk_symbols") if isinstance(entry, dict) else None
            if symbols is None:
                raise DataError(
                    f"mapping entry {key!r} has no 'bulk_symbols'",
                    file=self.path,
                    fix="use the release's oc20_data_mapping.pkl or oc22_metadata.pkl",
                )
            if self.kind == "oc22":
                key = int(key)
            self.labels[key] = str(symbols)

    def key(self, sid: Any) -> Any:
        """The mapping key for `sid` (an int, or a 'random<sid>' string)."""
        if self.kind == "oc20":
            return sid if isinstance(sid, str) and sid.startswith("random") else f"random{sid}"
        text = str(sid)
        return int(text[6:] if text.startswith("random") else text)

    def label(self, sid: Any, source: str | Path | None = None, record: str | None = None) -> str:
        try:
            return self.labels[self.key(sid)]
        except (KeyError, ValueError):
            where = f" (record from {source})" if source is not None else ""
            raise DataError(
                f"sid {sid!r} is not in the class mapping {self.path.name}{where}",
                file=self.path,
                record=record,
                fix="use the mapping of the same release as the data (OC20: oc20_data_mapping.pkl, "
                "OC22: oc22_metadata.pkl), or drop the classes option",
            ) from None


def refused(file: Path, key: str | None, exc: RefusedGlobal, record: str | None = None) -> DataError:
    """The error for a pickle that names a class outside the allow-list (it was not called)."""
    where = f"the value of key {key!r}" if key is not None else "the pickle"
    return DataError(
        f"{where} refers to {exc.qualname}, which OC20/OC22 data never needs; refused without calling it "
        "(a pickle can run code: this file may be crafted, or was written with other classes)",
        file=file,
        record=record or key,
        fix="use the release files from the dataset's download page; if you wrote this file yourself, store "
        "plain tensors, numbers and strings in the Data objects",
    )


def scalar(value: Any) -> Any:
    """A python int/float/str from a python scalar, numpy scalar or one-element array."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected a scalar, got an array of shape {value.shape}")
        return value.reshape(()).item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _det3(c: np.ndarray) -> float:
    (a, b, cc), (d, e, f), (g, h, i) = c.tolist()
    return a * (e * i - f * h) - b * (d * i - f * g) + cc * (d * h - e * g)


def lmdb_files(path: Path) -> list[Path]:
    """The `.lmdb` files of `path` (itself, or a directory's, sorted by name)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.glob("*.lmdb") if p.is_file())


class OCLmdbDataset(Dataset):
    """OC20 / OC22 LMDB release (pickled PyG Data per key); torch_geometric is not needed.

    Options:
        classes: path to `oc20_data_mapping.pkl` or `oc22_metadata.pkl`; class label =
            `bulk_symbols` of the record's sid. `class_labels()` then reads every record's sid
            (tensors skipped, ~70k records/s), once, and caches the labels.

    Energy is `energy` (newer writer) or `y` (older writer), in eV: the adsorption energy for OC20
    S2EF (already referenced), the total energy for OC22 S2EF-Total; `metadata()` names the field.
    Forces are `forces` or `force`. Records without them (IS2RE) get None. `tags` (int64) and
    `fixed` (bool) go to the Record; `sid`, `fid`, `natoms` to `info`. pbc is True on all three
    axes when a cell of nonzero volume is present (an all-zero cell is a molecule; another flat cell is an
    error). Record id: `<lmdb file name>/<key>`.
    """

    format_name: ClassVar[str] = "oc-lmdb"
    description: ClassVar[str] = "OC20 / OC22 LMDB release (data.NNNN.lmdb of pickled PyG Data)"
    source_units: ClassVar[dict[str, str]] = {"energy": "eV", "forces": "eV/A", "positions": "A"}

    def __init__(self, path: str | Path, *, classes: str | Path | None = None) -> None:
        super().__init__(path)
        self.files = lmdb_files(self.path)
        if not self.files:
            raise DataError(
                "no .lmdb files in this directory",
                file=self.path,
                fix="point to the directory holding data.0000.lmdb, ... or to one .lmdb file",
            )
        self.class_map = OCClassMap(classes) if classes is not None else None
        pool = self.handle()
        counts = [self._file_length(pool, k) for k in range(len(self.files))]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        if self._starts[-1] == 0:
            raise DataError(
                "the LMDB dataset holds no records",
                file=self.path,
                fix="check that the files are the release's data.NNNN.lmdb (not empty placeholders)",
            )
        self._labels: np.ndarray | None = None
        self._fields_seen: dict[str, str] | None = None

    # -- Dataset interface ----------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        if path.is_file():
            return path.suffix == ".lmdb"
        return path.is_dir() and any(p.is_file() for p in path.glob("*.lmdb"))

    def _open(self) -> EnvPool:
        return EnvPool(self.files)

    def _length(self) -> int:
        return self._starts[-1]

    def _file_length(self, pool: EnvPool, k: int) -> int:
        txn = pool.txn(k)
        raw = txn.get(b"length")
        if raw is None:
            return int(pool.envs[k].stat()["entries"])
        try:
            length = scalar(loads(raw))
            return int(length)
        except RefusedGlobal as exc:
            raise refused(self.files[k], "length", exc) from None
        except Exception as exc:  # noqa: BLE001 - bad value of the length key
            raise DataError(
                f"the 'length' key does not hold a pickled int ({exc})",
                file=self.files[k],
                record="length",
                fix=LMDB_FIX,
            ) from None

    def _locate(self, index: int) -> tuple[int, int]:
        k = bisect.bisect_right(self._starts, index) - 1
        return k, index - self._starts[k]

    def _fetch(self, index: int, skip_tensors: bool = False) -> tuple[Path, str, dict[str, Any]]:
        """(file, key, Data fields) of record `index`."""
        k, local = self._locate(index)
        file, key = self.files[k], str(local)
        rid = f"{file.name}/{key}"
        try:
            raw = self.handle().txn(k).get(key.encode("ascii"))
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - lmdb.CorruptedError and friends
            raise DataError(f"cannot read key {key!r}: {exc}", file=file, record=rid, fix=LMDB_FIX) from None
        if raw is None:
            raise DataError(
                f"key {key!r} is missing (the file claims {self._starts[k + 1] - self._starts[k]} records)",
                file=file,
                record=rid,
                fix="the file's 'length' key or entry count disagrees with its keys; rewrite the LMDB",
            )
        try:
            obj = loads(raw, skip_tensors=skip_tensors)
            if not is_pyg_data(obj):
                raise TypeError(f"value is a pickled {type(obj).__name__}, not a torch_geometric Data")
            fields = data_fields(obj)
        except RefusedGlobal as exc:
            raise refused(file, key, exc, rid) from None
        except ImportError as exc:
            raise DataError(
                f"decoding the value of key {key!r} needs the module '{exc.name}' ({exc})",
                file=file,
                record=rid,
                fix=f"install {exc.name} (plain CPU tensors decode without torch; other kinds need it)",
            ) from None
        except Exception as exc:  # noqa: BLE001 - anything in the value that is not a Data pickle
            raise DataError(
                f"value of key {key!r} is not a pickled torch_geometric Data ({type(exc).__name__}: {exc})",
                file=file,
                record=rid,
                fix="this reader expects the OC20/OC22 LMDB release; other LMDBs (e.g. .aselmdb) need "
                "their own --format",
            ) from None
        return file, key, fields

    def _read(self, index: int) -> Record:
        file, key, fields = self._fetch(index)
        rid = f"{file.name}/{key}"
        try:
            return self._record(fields, rid, file)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed field values
            raise DataError(
                f"malformed Data fields ({type(exc).__name__}: {exc})", file=file, record=rid, fix=LMDB_FIX
            ) from None

    def _record(self, fields: dict[str, Any], rid: str, file: Path) -> Record:
        for name in ("pos", "atomic_numbers"):
            if name not in fields:
                raise DataError(
                    f"Data has no '{name}' field (fields: {', '.join(sorted(fields))})",
                    file=file,
                    record=rid,
                    fix="this reader expects OC20/OC22 S2EF or IS2RE Data objects",
                )
        raw_numbers = np.asarray(fields["atomic_numbers"], dtype=np.float64)
        numbers = np.rint(raw_numbers).astype(np.int64).reshape(-1)
        if not np.array_equal(numbers, raw_numbers.reshape(-1)):  # stored as floats in OC releases: whole ones
            raise DataError(
                "atomic_numbers holds values that are not whole numbers", file=file, record=rid, fix=LMDB_FIX
            )
        positions = np.asarray(fields["pos"], dtype=np.float64)
        cell, pbc = None, np.zeros(3, dtype=bool)
        raw_cell = fields.get("cell")
        if raw_cell is not None:
            c = np.asarray(raw_cell, dtype=np.float64)
            c = c.reshape(3, 3) if c.size == 9 else c
            if c.shape != (3, 3) or abs(_det3(c)) > 1e-8:
                cell, pbc = c, np.ones(3, dtype=bool)
            elif c.any():  # an all-zero cell is a molecule; a flat one is damage, read as a molecule it was
                raise DataError(
                    f"the cell has zero volume (det {_det3(c):.3g} A^3) but is not all zeros",
                    file=file,
                    record=rid,
                    fix="repair the cell, or drop this structure",
                )
        energy = forces = None
        for name in _ENERGY_NAMES:
            if name in fields:
                energy = float(scalar(fields[name]))
                break
        for name in _FORCE_NAMES:
            if name in fields:
                forces = np.asarray(fields[name], dtype=np.float64)
                break
        tags = fields.get("tags")
        fixed = fields.get("fixed")
        info = {name: scalar(fields[name]) for name in ("sid", "fid", "natoms") if name in fields}
        targets = {name: float(scalar(fields[name])) for name in _EXTRA_TARGETS if name in fields}
        label = None
        if self.class_map is not None:
            if "sid" not in info:
                raise DataError(
                    "Data has no 'sid' field, needed for class labels",
                    file=file,
                    record=rid,
                    fix="drop the classes option",
                )
            label = self.class_map.label(info["sid"], file, rid)
        return Record(
            numbers=numbers,
            positions=positions,
            id=rid,
            cell=cell,
            pbc=pbc,
            energy=energy,
            forces=forces,
            targets=targets,
            class_label=label,
            tags=None if tags is None else np.asarray(tags).astype(np.int64).reshape(-1),
            fixed=None if fixed is None else (np.asarray(fixed) != 0).reshape(-1),
            info=info,
        )

    # -- fast paths and metadata -------------------------------------------------------------
    def class_labels(self) -> np.ndarray | None:
        """`bulk_symbols` per record, from each record's sid (tensors not decoded); cached."""
        if self.class_map is None:
            return None
        if self._labels is None:
            labels = np.empty(len(self), dtype=object)
            for i in range(len(self)):
                file, key, fields = self._fetch(i, skip_tensors=True)
                sid = fields.get("sid")
                if sid is None:  # a sid stored as a tensor: decode this record fully
                    sid = self._fetch(i)[2].get("sid")
                if sid is None:
                    raise DataError(
                        "Data has no 'sid' field, needed for class labels",
                        file=file,
                        record=key,
                        fix="drop the classes option",
                    )
                labels[i] = self.class_map.label(scalar(sid), file, f"{file.name}/{key}")
            self._labels = labels
        return self._labels

    def fields_used(self) -> dict[str, str]:
        """Which Data field names record 0 uses for energy and forces ('none' when absent)."""
        if self._fields_seen is None:
            fields = self._fetch(0)[2]
            self._fields_seen = {
                "energy_field": next((n for n in _ENERGY_NAMES if n in fields), "none"),
                "forces_field": next((n for n in _FORCE_NAMES if n in fields), "none"),
            }
        return self._fields_seen

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["n_files"] = len(self.files)
        meta.update(self.fields_used())
        kind = self.class_map.kind if self.class_map is not None else None
        meta["energy_meaning"] = {
            "oc20": "adsorption energy (OC20, already referenced)",
            "oc22": "total DFT energy (OC22)",
        }.get(kind, "as stored: adsorption energy for OC20 S2EF, total energy for OC22")
        if self.class_map is not None:
            meta["classes"] = str(self.class_map.path)
            meta["classes_kind"] = kind
        return meta
