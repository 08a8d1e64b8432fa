"""What a run read, as fingerprints in RUN/inputs.json: a run is reused or resumed only while they match."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from atomsift.errors import ConfigError, DataError


def read_run_json(path: Path) -> Any:
    """A run folder's JSON file (summary, test metrics, inputs), with a clear error when it is damaged."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(
            f"the run folder's {path.name} cannot be read (damaged or edited)",
            file=path,
            fix="restore it, or pass --overwrite to run again",
        ) from None


def read_run_yaml(path: Path, fix: str = "restore it, or pass --overwrite to start the run again") -> dict[str, Any]:
    """The settings a run saved (RUN/config.yaml, csi_config.yaml), with a clear error when the file is damaged,
    edited into something other than a mapping, or unreadable."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = ...
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the settings file {path.name} cannot be read (damaged or edited)", file=path, fix=fix)
    return data


def check_inputs(out: Path, fingerprints: dict[str, str] | None) -> None:
    """Refuse a run folder whose recorded input fingerprints differ from the files' now (runs written before
    inputs.json existed are not checked)."""
    path = out / "inputs.json"
    if not fingerprints or not path.exists():
        return
    saved = read_run_json(path)
    changed = sorted(k for k in set(saved) | set(fingerprints) if saved.get(k) != fingerprints.get(k))
    if changed:
        raise ConfigError(
            f"the files this run read have changed since it ran ({', '.join(changed)}: size, time or content)",
            file=out,
            fix="pass --overwrite to run again on the files as they are now, or restore them",
        )


def file_fingerprint(path: str | Path) -> str:
    """sha256 (16 hex) of a file's contents (checkpoints: a copied or moved run folder keeps it)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def input_fingerprints(datasets: dict[str, Any], files: tuple[str | Path | None, ...] = ()) -> dict[str, str]:
    """Fingerprints of the datasets a run reads (as the CSI cache's: format, options, size and file sizes and
    times; bundled ones left out, they change only with atomsift) and of other files it reads (checkpoints,
    by content); for inputs.json."""
    from atomsift.csi.cache import dataset_fingerprint

    out = {f"data:{name}": dataset_fingerprint(ds) for name, ds in datasets.items() if not _bundled(ds)}
    out.update({f"file:{Path(f).name}": file_fingerprint(f) for f in files if f is not None and Path(f).is_file()})
    return out


def _bundled(ds: Any) -> bool:
    """Every file the dataset reads ships with atomsift (a user's indices=FILE subset of a bundled set does not)."""
    from atomsift.data.bundled import bundled_dir

    root = Path(bundled_dir()).resolve()
    files = [Path(f).resolve() for f in ds.source_files()] or [Path(ds.path).resolve()]
    return all(f == root or root in f.parents for f in files)
