"""ASE databases: SQLite `.db` and JSON `.json` (`ase-db`), and ASE-LMDB `.aselmdb` (`aselmdb`).

Both map a row to a record the same way: energy and forces from the row's calculator results
(eV, eV/A), `tags`, `fixed` from FixAtoms constraints, numeric key_value_pairs and other calculator
results (stress, free_energy, ...) as targets, text key_value_pairs in `info`. The class label is the
key_value_pair `class_label` when present (files written by `write_aselmdb`), else the key named by
`class_key`, else the Hill formula. The id is the key_value_pair `atomsift_id` when present, else
`row<id>`. Non-periodic rows get `cell=None`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase.io.jsonio import decode

from atomsift.data.base import Dataset
from atomsift.data.readers._common import hill_formula, open_failed
from atomsift.data.readers._lmdb import EnvPool, acquire_env, release_env
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

SQLITE_MAGIC = b"SQLite format 3\x00"
ID_KEY, LABEL_KEY, TARGETS_KEY = "atomsift_id", "class_label", "atomsift_targets"
_EXTRA_RESULTS = ("free_energy", "stress", "stresses", "dipole", "charges", "magmom", "magmoms", "energies")


def _fixed_mask(constraints: Iterable[Any] | None, n: int) -> np.ndarray | None:
    """(n,) bool mask of atoms fixed by FixAtoms, from constraint dicts or objects; None if none."""
    fixed = None
    for c in constraints or ():
        if isinstance(c, Mapping):
            if c.get("name") != "FixAtoms":
                continue
            kwargs = c.get("kwargs", {})
            idx = kwargs.get("indices")
            if idx is None and kwargs.get("mask") is not None:
                idx = np.flatnonzero(np.asarray(kwargs["mask"], dtype=bool))
        elif type(c).__name__ == "FixAtoms":
            idx = c.index
        else:
            continue
        fixed = np.zeros(n, dtype=bool) if fixed is None else fixed
        fixed[np.asarray(idx, dtype=np.int64)] = True
    return fixed


def _kvp_string_ok(value: str) -> bool:
    """Whether ASE's db accepts `value` as a string key_value_pair (it rejects numbers and booleans)."""
    try:
        float(value)
    except ValueError:
        return value.lower() not in ("true", "false")
    return False


def record_from_fields(
    fields: Mapping[str, Any],
    kvp: Mapping[str, Any],
    data: Mapping[str, Any] | None,
    constraints: Iterable[Any] | None,
    *,
    row_id: int,
    class_key: str | None,
    file: str | Path,
) -> Record:
    """Build a Record from the stored fields of one ASE db row (numbers, positions, cell, ...)."""
    own = data if isinstance(data, Mapping) else {}
    rid = str(kvp.get(ID_KEY, own.get(ID_KEY, f"row{row_id}")))
    try:
        numbers = np.asarray(fields["numbers"], dtype=np.int64).reshape(-1)
        positions = np.asarray(fields["positions"], dtype=np.float64).reshape(-1, 3)
        pbc = np.asarray(fields.get("pbc", (False,) * 3), dtype=bool).reshape(3)
        cell_raw = fields.get("cell")
        cell = np.asarray(cell_raw, dtype=np.float64).reshape(3, 3) if cell_raw is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"row is malformed ({exc})", file=file, record=rid, fix="repair or drop this row") from None
    n = numbers.shape[0]
    if not pbc.any():
        cell = None
    energy = fields.get("energy")
    forces = fields.get("forces")
    tags = fields.get("tags")
    targets: dict[str, Any] = {}
    info: dict[str, Any] = {"row_id": int(row_id)}
    for key in _EXTRA_RESULTS:
        if fields.get(key) is not None:
            value = fields[key]
            targets[key] = float(value) if np.isscalar(value) else np.asarray(value, dtype=np.float64)
    for key, value in kvp.items():
        if key in (ID_KEY, LABEL_KEY):
            continue
        if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
            targets[key] = float(value)
        else:
            info[key] = value
    if data and isinstance(data.get(TARGETS_KEY), Mapping):
        targets.update(data[TARGETS_KEY])
    if LABEL_KEY in kvp:
        label: str | None = str(kvp[LABEL_KEY])
    elif LABEL_KEY in own:
        label = None if own[LABEL_KEY] is None else str(own[LABEL_KEY])
    elif class_key is not None:
        if class_key not in kvp:
            raise DataError(
                f"class key '{class_key}' is not among this row's key_value_pairs ({', '.join(kvp) or 'none'})",
                file=file,
                record=rid,
                fix="choose class_key from the key_value_pairs every row has, or leave it out (Hill formula)",
            )
        label = str(kvp[class_key])
    else:
        label = hill_formula(numbers)
    return Record(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=pbc,
        id=rid,
        energy=None if energy is None else float(energy),
        forces=None if forces is None else np.asarray(forces, dtype=np.float64).reshape(-1, 3),
        targets=targets,
        class_label=label,
        tags=None if tags is None else np.asarray(tags, dtype=np.int64).reshape(-1),
        fixed=_fixed_mask(constraints, n),
        info=info,
    )


def _row_record(row: Any, class_key: str | None, file: Path) -> Record:
    """Record of an `ase.db.row.AtomsRow`."""
    return record_from_fields(
        row.__dict__, row.key_value_pairs, row.data, row.constraints, row_id=row.id, class_key=class_key, file=file
    )


def _has_sqlite_magic(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(16) == SQLITE_MAGIC


def _is_ase_sqlite(path: Path) -> bool:
    if not _has_sqlite_magic(path):
        return False
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    return {"systems", "information"} <= names or {"systems", "keys"} <= names


def _is_ase_json(path: Path) -> bool:
    with open(path, "rb") as fh:
        if fh.read(1) != b"{":
            return False
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 4096))
        tail = fh.read()
    return b'"nextid"' in tail and b'"ids"' in tail


class AseDbDataset(Dataset):
    """An ASE database file: SQLite (`.db`) or JSON (`.json`), read-only, random access by row.

    Args:
        path: the `.db` or `.json` file.
        class_key: key_value_pair holding the class label (default: Hill formula of the row).
    """

    format_name: ClassVar[str] = "ase-db"
    description: ClassVar[str] = "ASE database (SQLite .db or JSON .json), energies/forces from the calculator"
    source_units: ClassVar[dict[str, str]] = {"energy": "eV", "forces": "eV/angstrom", "length": "angstrom"}

    def __init__(self, path: str | Path, *, class_key: str | None = None) -> None:
        super().__init__(path)
        self.class_key = class_key
        try:
            self.kind = "db" if _is_ase_sqlite(self.path) else "json" if _is_ase_json(self.path) else None
            if self.kind is None:
                raise ValueError("neither an ASE SQLite database nor an ASE JSON database")
            if self.kind == "db":
                con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                try:
                    ids = [r[0] for r in con.execute("SELECT id FROM systems ORDER BY id")]
                finally:
                    con.close()
            else:
                ids = sorted(self._json_rows())
        except (OSError, ValueError, KeyError, sqlite3.Error) as exc:
            raise open_failed(self.path, exc, "ASE database") from None
        if not ids:
            raise DataError("the database holds no rows", file=self.path, fix="write structures into it first")
        self._ids = np.asarray(ids, dtype=np.int64)

    def _json_rows(self) -> dict[int, Any]:
        from ase.db.jsondb import JSONDatabase

        return {row.id: row for row in JSONDatabase(str(self.path), use_lock_file=False).select()}

    def _open(self) -> Any:
        try:
            if self.kind == "json":
                return self._json_rows()
            from ase.db.sqlite import SQLite3Database

            db = SQLite3Database(str(self.path), create_indices=False, use_lock_file=False)
            # a persistent read-only connection (what `with db:` does, without write access)
            db.connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            db.change_count = 0
            return db
        except (OSError, ValueError, sqlite3.Error) as exc:
            raise open_failed(self.path, exc, "ASE database") from None

    def _close(self, handle: Any) -> None:
        if self.kind == "db" and handle.connection is not None:
            handle.connection.close()
            handle.connection = None

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            if path.suffix == ".db":
                return _is_ase_sqlite(path)
            if path.suffix == ".json":
                return _is_ase_json(path)
        except sqlite3.Error:  # an SQLite file that cannot be read (cut short): the reader says what is wrong
            return path.suffix == ".db" and _has_sqlite_magic(path)
        return False

    _said_null = False

    def _length(self) -> int:
        return int(self._ids.shape[0])

    def _read(self, index: int) -> Record:
        row_id = int(self._ids[index])
        handle = self.handle()
        try:
            row = handle[row_id] if self.kind == "json" else handle._get_row(row_id)
        except (KeyError, TypeError, sqlite3.Error) as exc:
            raise DataError(
                f"cannot read row ({exc})", file=self.path, record=f"row{row_id}", fix="repair the database"
            ) from None
        record = _row_record(row, self.class_key, self.path)
        if self.kind == "db" and record.energy is None and record.forces is not None and not self._said_null:
            self._said_null = True  # once per dataset: forces-only data is legitimate, a NULL may also be a NaN
            warnings.warn(
                f"{self.path.name}: {record.id} has forces but no energy. ASE's SQLite backend stores a NaN energy "
                "as NULL: if a calculation failed there, drop its rows; such structures count as without an energy "
                "(left out of energy losses and errors)",
                stacklevel=2,
            )
        return record

    def class_labels(self) -> np.ndarray | None:
        if self.kind != "db":
            return super().class_labels()
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            labels: dict[int, str] = {}
            for row_id, blob, kvp_text in con.execute("SELECT id, numbers, key_value_pairs FROM systems"):
                kvp = json.loads(kvp_text) if kvp_text else {}
                if LABEL_KEY in kvp:
                    labels[row_id] = str(kvp[LABEL_KEY])
                elif self.class_key is not None and self.class_key in kvp:
                    labels[row_id] = str(kvp[self.class_key])
                elif self.class_key is not None:
                    raise DataError(
                        f"class key '{self.class_key}' missing",
                        file=self.path,
                        record=f"row{row_id}",
                        fix="choose a key_value_pair every row has",
                    )
                else:
                    labels[row_id] = hill_formula(np.frombuffer(blob, dtype=np.int32))
        finally:
            con.close()
        return np.asarray([labels[int(i)] for i in self._ids], dtype=object)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["backend"] = "sqlite" if self.kind == "db" else "json"
        return meta


# -- ASE-LMDB --------------------------------------------------------------------------------------
def _lmdb_value(txn: Any, key: str, file: Path, record: str | None = None) -> Any:
    """The decoded value stored under `key` (ase-db-backends layout: zlib-compressed ASE JSON), or None."""
    raw = txn.get(key.encode("ascii"))
    if raw is None:
        return None
    try:
        return decode(zlib.decompress(raw).decode("utf-8"))
    except (zlib.error, ValueError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot decode entry '{key}' ({exc})", file=file, record=record or key, fix="the file is corrupt"
        ) from None


def _aselmdb_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix == ".aselmdb" and p.is_file())
    return [path]


class AseLmdbDataset(Dataset):
    """ASE-LMDB (`.aselmdb`; fairchem's OMat24/OMol25/ODAC format): one file or a folder of them.

    Rows are indexed globally across the folder's `*.aselmdb` files in sorted name order, each file
    in its row-id order. Read through one read-only LMDB transaction per file and process.

    Args:
        path: an `.aselmdb` file or a directory of them.
        class_key: key_value_pair holding the class label (default: Hill formula of the row).
    """

    format_name: ClassVar[str] = "aselmdb"
    description: ClassVar[str] = "ASE-LMDB (.aselmdb, fairchem OMat24/OMol25 format), file or folder"
    source_units: ClassVar[dict[str, str]] = {"energy": "eV", "forces": "eV/angstrom", "length": "angstrom"}

    def __init__(self, path: str | Path, *, class_key: str | None = None) -> None:
        super().__init__(path)
        self.class_key = class_key
        self.files = _aselmdb_files(self.path)
        if not self.files:
            raise DataError(
                "no *.aselmdb files in this folder", file=self.path, fix="point at an .aselmdb file or its folder"
            )
        # per file: None when the row ids are 1..n (the usual case), else the id array
        self._ids: list[np.ndarray | None] = []
        counts = []
        self._written: list[dict[str, Any]] = []
        for file in self.files:
            ids, meta = self._index(file)
            self._ids.append(None if np.array_equal(ids, np.arange(1, len(ids) + 1)) else ids)
            counts.append(len(ids))
            self._written.append({k: v for k, v in meta.items() if k not in ("natoms", "class_labels")})
        self._offsets = np.cumsum([0] + counts)
        if self._offsets[-1] == 0:
            raise DataError("the ASE-LMDB data holds no rows", file=self.path, fix="write structures into it first")

    @staticmethod
    def _index(file: Path) -> tuple[np.ndarray, dict[str, Any]]:
        """Row ids (as ase-db-backends: 1..nextid-1 less deleted ids) and the metadata dict of `file`."""
        import lmdb

        key, env = acquire_env(file)
        try:
            with env.begin() as txn:
                nextid = _lmdb_value(txn, "nextid", file) or 1
                deleted = set(_lmdb_value(txn, "deleted_ids", file) or [])
                meta = _lmdb_value(txn, "metadata", file) or {}
        except lmdb.Error as exc:
            raise open_failed(file, exc, "ASE-LMDB file") from None
        finally:
            release_env(key)
        ids = np.arange(1, int(nextid), dtype=np.int64)
        if deleted:
            ids = ids[~np.isin(ids, np.fromiter(deleted, dtype=np.int64))]
        return ids, dict(meta)

    def _open(self) -> EnvPool:
        return EnvPool(self.files)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if path.is_dir():
            return any(p.suffix == ".aselmdb" for p in path.iterdir())
        return path.suffix == ".aselmdb"

    def _length(self) -> int:
        return int(self._offsets[-1])

    def _read(self, index: int) -> Record:
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        local = index - int(self._offsets[k])
        row_id = local + 1 if self._ids[k] is None else int(self._ids[k][local])
        file = self.files[k]
        dct = _lmdb_value(self.handle().txn(k), str(row_id), file, f"row{row_id}")
        if not isinstance(dct, dict):
            raise DataError("row missing from the file", file=file, record=f"row{row_id}", fix="the file is corrupt")
        return record_from_fields(
            dct,
            dct.get("key_value_pairs") or {},
            dct.get("data"),
            dct.get("constraints"),
            row_id=row_id,
            class_key=self.class_key,
            file=file,
        )

    def class_labels(self) -> np.ndarray | None:
        stored = [self._index(f)[1].get("class_labels") for f in self.files]
        counts = np.diff(self._offsets)
        if self.class_key is None and all(isinstance(s, list) and len(s) == n for s, n in zip(stored, counts)):
            labels = [label for s in stored for label in s]
            if all(label is None for label in labels):
                return None
            return np.asarray(["" if label is None else label for label in labels], dtype=object)
        return super().class_labels()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["files"] = [str(f) for f in self.files]
        if any(self._written):
            meta["written"] = self._written if len(self.files) > 1 else self._written[0]
        return meta


def write_aselmdb(
    path: str | Path,
    records: Iterable[Record],
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> Path:
    """Write records to one `.aselmdb` file, atomically (a temporary file renamed at the end).

    Energy and forces go on a SinglePointCalculator (`Record.to_atoms()`); the id and class label
    go into `data` and, where ASE accepts the string, key_value_pairs (`atomsift_id`, `class_label`); numeric scalar targets with valid key
    names into key_value_pairs too, and all targets into `data['atomsift_targets']`. The file's
    metadata holds `metadata` plus `natoms` (list), `class_labels` (list) and `n_structures`.
    `total` sizes the progress bar when `records` is a generator.

    Returns:
        The path written.
    """
    from ase.db.core import reserved_keys, word
    from ase_db_backends.aselmdb import LMDBDatabase

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    for stale in (tmp, Path(f"{tmp}-lock")):
        stale.unlink(missing_ok=True)
    natoms: list[int] = []
    labels: list[str | None] = []
    iterator = records
    if progress:
        from atomsift.progress import progress_bar

        iterator = progress_bar(records, desc=f"writing {path.name}", unit="structure", total=total)
    try:
        db = LMDBDatabase(tmp, readonly=False, use_lock_file=False)
        with db:
            for rec in iterator:
                own = {ID_KEY: rec.id, LABEL_KEY: rec.class_label}
                # ASE refuses key_value_pair strings that read as numbers or booleans ('17', 'True'):
                # those stay in `data` only, where the reader finds them too
                kvp: dict[str, Any] = {k: v for k, v in own.items() if v is not None and _kvp_string_ok(v)}
                for key, value in rec.targets.items():
                    if np.isscalar(value) and word.match(key) and key not in reserved_keys and key not in kvp:
                        kvp[key] = value.item() if isinstance(value, np.generic) else value
                data: dict[str, Any] = dict(own)  # a None label stays None on reading back
                if rec.targets:
                    data[TARGETS_KEY] = dict(rec.targets)
                atoms = rec.to_atoms()
                atoms.info.clear()
                try:  # only ASE's refusals here: a reader's errors name their own file and record
                    db.write(atoms, key_value_pairs=kvp, data=data)
                except ValueError as exc:
                    raise ConfigError(f"cannot write record to ASE-LMDB: {exc}", file=path, record=rec.id) from None
                natoms.append(rec.natoms)
                labels.append(rec.class_label)
            db.metadata = {
                **dict(metadata or {}),
                "n_structures": len(natoms),
                "natoms": natoms,
                "class_labels": labels,
            }
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}-lock").unlink(missing_ok=True)
    return path
