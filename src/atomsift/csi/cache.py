"""Statistics cache: small `.npz` files holding grouped sufficient statistics and their provenance.

A file is reused only when its provenance (extractor and weights hash, layer, aggregation, sampling, n,
seed, dataset fingerprint, the extractor's `provenance_extra()` such as a checkpoint's load report, atomsift
version) equals the requested one; a file with other provenance is
never silently overwritten. Files are written to a temporary name and renamed, so a crash leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from atomsift import __version__
from atomsift.data.base import Dataset
from atomsift.errors import ConfigError, DataError
from atomsift.settings import atomic_path

CACHE_FORMAT = 1


def dataset_fingerprint(ds: Dataset) -> str:
    """sha256 (hex, 16 chars) of the dataset's format, reader options, length and file sizes/mtimes.

    Cheap (no data read): a re-downloaded or edited file changes it, so stale statistics are not reused.
    """
    files = ds.source_files()  # a file, a folder's files, or the files a glob matched
    h = hashlib.sha256()
    meta = ds.metadata()
    h.update(json.dumps({"format": ds.format_name, "n": len(ds), "meta": meta}, sort_keys=True, default=str).encode())
    for p in files:
        st = p.stat()
        if ds.path.is_dir() and p.is_relative_to(ds.path):
            name = str(p.relative_to(ds.path))
        else:
            name = p.name if len(files) == 1 else str(p)  # a glob's files may share names across folders
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def save_stats(path: Path, arrays: dict[str, np.ndarray], provenance: dict[str, Any]) -> Path:
    """Write statistics arrays and provenance to `path` (.npz), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(arrays)
    full = {**provenance, "atomsift_version": __version__, "cache_format": CACHE_FORMAT}
    payload["provenance_json"] = np.array(json.dumps(full, sort_keys=True, default=str))
    with atomic_path(path, suffix=".tmp.npz") as tmp:  # np.savez adds .npz to names without it
        np.savez(tmp, **payload)
    return path


def load_stats(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, provenance) of a cache file; DataError when it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "provenance_json"}
            provenance = json.loads(str(npz["provenance_json"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # cut short, edited, not ours
        raise DataError(
            f"cannot read the statistics cache file ({exc})",
            file=path,
            fix="delete it (it will be recomputed) or pass --recompute",
        ) from None
    return arrays, provenance


def lookup(path: Path, provenance: dict[str, Any], recompute: bool = False) -> dict[str, np.ndarray] | None:
    """Cached arrays when `path` exists with the same provenance; None when it must be computed.

    Raises ConfigError when the file exists with other provenance and `recompute` is False.
    """
    if not path.exists():
        return None
    try:
        arrays, stored = load_stats(path)
    except DataError:
        if recompute:  # a damaged file is replaced like one with other settings
            return None
        raise
    stored_core = {k: v for k, v in stored.items() if k != "cache_format"}
    wanted = json.loads(json.dumps({**provenance, "atomsift_version": __version__}, sort_keys=True, default=str))
    if stored_core == wanted and stored.get("cache_format") == CACHE_FORMAT:
        return arrays
    if recompute:
        return None
    diff = sorted(k for k in set(stored_core) | set(wanted) if stored_core.get(k) != wanted.get(k))
    detail = "; ".join(f"{k}: cached {stored_core.get(k)!r}, wanted {wanted.get(k)!r}" for k in diff[:4])
    raise ConfigError(
        f"the statistics cache file was computed with other settings ({detail})",
        file=path,
        fix="pass --recompute (csi.recompute=true in an experiment) to replace it, or choose another --cache-dir",
    )
