"""Read-only LMDB access shared by the LMDB readers (OC20/OC22 release, ASE-LMDB).

py-lmdb >= 3 refuses to open one file twice in a process, so environments are shared per file and
process (reference-counted, re-opened after a fork). Files are checked against the page count in their
header before any page is touched: a truncated file mapped into memory would crash the process (SIGBUS)
instead of raising an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from atomsift.data.readers._common import open_failed
from atomsift.errors import DataError

LMDB_FIX = (
    "the LMDB file may be truncated or corrupt: compare its size and checksum with the release and download it again"
)


def open_lmdb(path: Path) -> Any:
    """Open one single-file LMDB read-only; DataError when it is not an LMDB or is truncated."""
    import lmdb

    try:
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as exc:
        fix = LMDB_FIX
        if "already open" in str(exc):
            fix = "close the other lmdb.Environment on this file in this process (py-lmdb >= 3 allows one)"
        raise open_failed(path, exc, "the LMDB file", fix) from None
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(path)
    if size < needed:
        env.close()
        raise DataError(
            f"LMDB file is truncated: {size} bytes on disk, its header says {needed}",
            file=path,
            fix=LMDB_FIX,
        )
    return env


# One environment per LMDB file per process, shared by every dataset object reading it:
# py-lmdb >= 3 refuses to open a file twice in one process. file identity -> [env, pid, users].
_ENVS: dict[tuple[int, int], list[Any]] = {}


def acquire_env(path: Path) -> tuple[tuple[int, int], Any]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise open_failed(path, exc, "the LMDB file", LMDB_FIX) from None
    key = (st.st_dev, st.st_ino)
    entry = _ENVS.get(key)
    if entry is not None and entry[1] != os.getpid():  # inherited through fork: reopen here
        try:
            entry[0].close()
        except Exception:  # noqa: BLE001 - the parent's env is unusable anyway
            pass
        del _ENVS[key]
        entry = None
    if entry is None:
        entry = _ENVS[key] = [open_lmdb(path), os.getpid(), 0]
    entry[2] += 1
    return key, entry[0]


def release_env(key: tuple[int, int]) -> None:
    entry = _ENVS.get(key)
    if entry is None or entry[1] != os.getpid():
        return
    entry[2] -= 1
    if entry[2] <= 0:
        del _ENVS[key]
        entry[0].close()


class EnvPool:
    """This process's read transactions, one per LMDB file, opened on first use."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.pid = os.getpid()
        self.keys: list[Any] = [None] * len(files)
        self.envs: list[Any] = [None] * len(files)
        self.txns: list[Any] = [None] * len(files)

    def txn(self, k: int) -> Any:
        txn = self.txns[k]
        if txn is None:
            self.keys[k], self.envs[k] = acquire_env(self.files[k])
            txn = self.txns[k] = self.envs[k].begin(buffers=False)
        return txn

    def close(self) -> None:
        if self.pid != os.getpid():
            return
        for txn, key in zip(self.txns, self.keys):
            if txn is not None:
                try:
                    txn.abort()
                except Exception:  # noqa: BLE001 - env already closed elsewhere
                    pass
                release_env(key)
        self.keys = [None] * len(self.files)
        self.envs = [None] * len(self.files)
        self.txns = [None] * len(self.files)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
