"""Feature extraction for CSI: a batch of records -> per-atom feature rows, and their aggregation.

    from atomsift.csi.extract import get_extractor, aggregate
    ex = get_extractor("sevenn")                 # or "chgnet", "soap", "soap-full", "checkpoint:PATH"
    rows = ex.features(records)                  # list of (n_atoms_i, ex.dim) float64 arrays
    x = aggregate(rows, "flat")                  # (sum n_atoms_i, dim): every atom one observation

Extractors are built by factories kept in `EXTRACTORS`, a plain dict; `register_extractor` adds one.
"checkpoint:PATH" reads model checkpoints (extractors/checkpoint.py). Importing this module is cheap: model
libraries are imported inside the factories, when an extractor is actually built. See docs/extractors.md.
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError, did_you_mean

DEFAULT_EXTRACTOR = "sevenn"
AGGREGATIONS: tuple[str, ...] = ("flat", "mean", "sum", "max")

# Variables that keep model libraries (and anything they pull in) from reaching the network.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "offline",
    "DISABLE_MP_API_WARNINGS": "1",
}


def offline_guards() -> None:
    """Set the offline environment variables (without overriding ones the user set); call before imports."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_settings(settings: dict[str, Any]) -> str:
    """Hex sha256 of a settings dict (canonical JSON: sorted keys, no whitespace)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def missing_package(package: str, extra: str, name: str) -> ConfigError:
    """The error for an extractor whose optional dependency is not installed."""
    return ConfigError(
        f"the '{name}' feature extractor needs the '{package}' package, which is not installed",
        fix=f"pip install atomsift[{extra}]",
    )


class FeatureExtractor(abc.ABC):
    """Maps records to per-atom feature rows, without heads, in eval mode, without dropout or gradients.

    Attributes:
        name: extractor name recorded in the provenance, e.g. "sevenn-0".
        dim: feature width d.
        layer: which layer (or descriptor setting) the features come from, for the provenance.
        supported_numbers: atomic numbers the extractor can embed; None means any element.
        csi_units: the units of a CSI computed from these features (a Frechet distance has the units of the
            features squared), for tables and chart axes. CSI values compare only within one extractor.
    """

    name: str
    dim: int
    layer: str
    supported_numbers: frozenset[int] | None = None
    csi_units: str = "squared feature units"

    @abc.abstractmethod
    def weights_hash(self) -> str:
        """Hex sha256 of the weights file (or of a descriptor's settings)."""

    @abc.abstractmethod
    def features(self, records: Sequence[Record]) -> list[np.ndarray]:
        """Per-structure feature rows, one (n_atoms_i, dim) float64 array per record, in order.

        Raises:
            DataError: a record holds an element the extractor does not know (names the element, the record
                and the extractor), or its geometry cannot be embedded (e.g. pbc without a cell).
        """

    def provenance(self) -> dict[str, Any]:
        """What identifies these features: name, layer, dim, weights hash, and `provenance_extra()`."""
        return {
            "name": self.name,
            "layer": self.layer,
            "dim": int(self.dim),
            "weights_hash": self.weights_hash(),
            **self.provenance_extra(),
        }

    def provenance_extra(self) -> dict[str, Any]:
        """More that decides the features besides name, layer, dim and weights hash (JSON-serialisable).

        The CSI pipeline puts it into every cache file's provenance (a cache made with other values is not
        reused) and into every csi.json row. Default: nothing; the checkpoint extractor gives its load report.
        """
        return {}

    def check_elements(self, records: Sequence[Record]) -> None:
        """Raise DataError for the first record holding an element outside `supported_numbers`."""
        if self.supported_numbers is None:
            return
        from ase.data import chemical_symbols

        known = self.supported_numbers
        for rec in records:
            for z in np.unique(np.asarray(rec.numbers)):
                if int(z) not in known:
                    z = int(z)
                    symbol = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"
                    raise DataError(
                        f"element {symbol} (atomic number {z}) is not known to the '{self.name}' feature "
                        f"extractor, which covers {_describe_numbers(known)}",
                        record=rec.id,
                        fix=(
                            f"drop structures containing {symbol} from the data, or choose an extractor that "
                            "knows it (--extractor chgnet covers H-Pu; soap/soap-full cover the `species` "
                            "you give them)"
                        ),
                    )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, layer={self.layer!r})"


class FileWeightsExtractor(FeatureExtractor):
    """An extractor whose weights live in one file: `weights_hash` is that file's sha256, computed once."""

    weights_path: Path
    _weights_sha256: str | None = None

    def weights_hash(self) -> str:
        if self._weights_sha256 is None:
            self._weights_sha256 = sha256_file(self.weights_path)
        return self._weights_sha256


def _describe_numbers(numbers: frozenset[int]) -> str:
    from ase.data import chemical_symbols

    zs = sorted(numbers)
    if len(zs) > 12:
        first = ", ".join(chemical_symbols[z] for z in zs[:6])
        return f"{len(zs)} elements ({first}, ... up to {chemical_symbols[zs[-1]]})"
    return f"{len(zs)} element(s): {', '.join(chemical_symbols[z] for z in zs)}"


def check_geometry(rec: Record, extractor: str) -> None:
    """Raise DataError when a record is periodic in some direction but has no usable cell."""
    pbc = np.asarray(rec.pbc, dtype=bool)
    if pbc.any():
        cell = None if rec.cell is None else np.asarray(rec.cell, dtype=float)
        if cell is None or abs(np.linalg.det(cell)) < 1e-8:
            raise DataError(
                f"structure is periodic (pbc={pbc.tolist()}) but has no cell with non-zero volume, so the "
                f"'{extractor}' feature extractor cannot build its periodic neighbour list",
                record=rec.id,
                fix="give the structure its cell, or set pbc to False for a molecule",
            )


# ---- registry -------------------------------------------------------------------------------------------------


def _sevenn(*, checkpoint: str | None = None, device: str = "cpu", batch_size: int = 32) -> FeatureExtractor:
    from atomsift.csi.extractors.sevenn import SevenNetExtractor

    return SevenNetExtractor(checkpoint=checkpoint, device=device, batch_size=batch_size)


def _chgnet(*, device: str = "cpu", batch_size: int = 32) -> FeatureExtractor:
    from atomsift.csi.extractors.chgnet import CHGNetExtractor

    return CHGNetExtractor(device=device, batch_size=batch_size)


def _soap(
    *,
    species: Sequence[str | int] | None = None,
    r_cut: float = 5.0,
    n_max: int = 6,
    l_max: int = 4,
    sigma: float = 0.5,
    species_weighting: dict[str | int, float] | None = None,
    device: str = "cpu",
) -> FeatureExtractor:
    from atomsift.csi.extractors.soap import SOAPExtractor

    return SOAPExtractor(
        species=species,
        full=False,
        r_cut=r_cut,
        n_max=n_max,
        l_max=l_max,
        sigma=sigma,
        species_weighting=species_weighting,
        device=device,
    )


def _soap_full(
    *,
    species: Sequence[str | int] | None = None,
    r_cut: float = 5.0,
    n_max: int = 6,
    l_max: int = 4,
    sigma: float = 0.5,
    device: str = "cpu",
) -> FeatureExtractor:
    from atomsift.csi.extractors.soap import SOAPExtractor

    return SOAPExtractor(species=species, full=True, r_cut=r_cut, n_max=n_max, l_max=l_max, sigma=sigma, device=device)


def _checkpoint(
    path: str,
    *,
    device: str = "cpu",
    batch_size: int = 32,
    ema: bool = True,
    trusted: bool = False,
    dtype: str = "float32",
    strict: bool = True,
) -> FeatureExtractor:
    from atomsift.csi.extractors.checkpoint import CheckpointExtractor

    return CheckpointExtractor(
        path, device=device, batch_size=batch_size, ema=ema, trusted=trusted, dtype=dtype, strict=strict
    )


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "sevenn": _sevenn,
    "checkpoint": _checkpoint,
    "chgnet": _chgnet,
    "soap": _soap,
    "soap-full": _soap_full,
}
"""name -> factory(**options) -> FeatureExtractor. A spec "NAME:ARG" calls EXTRACTORS[NAME](ARG, **options)."""


def register_extractor(name: str, factory: Callable[..., FeatureExtractor], *, replace: bool = False) -> None:
    """Make `factory` available as `get_extractor(name)` (and `--extractor name`).

    Args:
        name: registry key; lower case, no ':' (a spec "name:ARG" passes ARG as the factory's first argument).
        factory: callable returning a FeatureExtractor; called as factory(**options) or factory(ARG, **options).
        replace: allow replacing an extractor already registered under `name`.
    """
    key = name.strip().lower().replace("_", "-")
    if not key or ":" in key:
        raise ConfigError(f"invalid extractor name '{name}'", fix="use a non-empty name without ':'")
    if not callable(factory):
        raise ConfigError(f"the factory registered as '{key}' is not callable", fix="pass a class or a function")
    if key in EXTRACTORS and not replace and EXTRACTORS[key] is not factory:
        raise ConfigError(
            f"a feature extractor named '{key}' is already registered",
            fix="choose another name, or pass replace=True to register_extractor",
        )
    EXTRACTORS[key] = factory


def get_extractor(spec: str, **options: Any) -> FeatureExtractor:
    """Build the extractor named by `spec`: "sevenn" (default) | "chgnet" | "soap" | "soap-full" | "NAME:ARG".

    "checkpoint:PATH" builds EXTRACTORS["checkpoint"](PATH, **options): the backbone embeddings of an atomsift
    (PaiNN, GemNet-OC), JMP or fairchem-core 1.10 GemNet-OC checkpoint.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("empty feature extractor name", fix=f"use one of: {', '.join(EXTRACTORS)}")
    text = spec.strip()
    name, sep, arg = text.partition(":")
    key = name.strip().lower().replace("_", "-")
    args: tuple[Any, ...] = (arg,) if sep else ()
    if key not in EXTRACTORS:
        raise ConfigError(
            f"unknown feature extractor '{text}'",
            fix=did_you_mean([key], EXTRACTORS)
            + f"use one of: {', '.join(EXTRACTORS)} (checkpoint as 'checkpoint:PATH'), or add one "
            "with atomsift.csi.extract.register_extractor",
        )
    if sep and not arg:
        raise ConfigError(f"feature extractor '{text}' has an empty argument after ':'", fix=f"write {key}:VALUE")
    factory = EXTRACTORS[key]
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **options)
        except TypeError as exc:
            accepted = [
                p.name for p in signature.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            first = next(iter(signature.parameters.values()), None)
            if (
                not args
                and first is not None
                and first.kind is first.POSITIONAL_OR_KEYWORD
                and first.default is first.empty
                and first.name not in options
            ):
                fix = f"give its {first.name} after a colon: --extractor {key}:{first.name.upper()}"
            else:
                fix = f"its options are: {', '.join(accepted) or 'none'}"
            raise ConfigError(f"bad options for feature extractor '{text}': {exc}", fix=fix) from None
    extractor = factory(*args, **options)
    if not isinstance(extractor, FeatureExtractor):
        raise ConfigError(
            f"the factory registered as '{key}' returned {type(extractor).__name__}, not a FeatureExtractor",
            fix="make the factory return an atomsift.csi.extract.FeatureExtractor subclass",
        )
    return extractor


# ---- aggregation -----------------------------------------------------------------------------------------------


def aggregate(features: Sequence[np.ndarray], how: str = "flat") -> np.ndarray:
    """Turn per-structure rows into observations.

    Args:
        features: one (n_atoms_i, d) array per structure (all the same d).
        how: "flat" (every atom one observation: rows concatenated, shape (sum n_i, d)) or "mean", "sum",
            "max" (one row per structure, shape (n_structures, d)).

    Returns:
        float64 array of observations.
    """
    if how not in AGGREGATIONS:
        raise ConfigError(f"unknown aggregation '{how}'", fix=f"use one of: {', '.join(AGGREGATIONS)}")
    if len(features) == 0:
        raise DataError("no structures to aggregate (empty list of features)", fix="pass at least one structure")
    arrays = [np.asarray(f, dtype=np.float64) for f in features]
    dim = None
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise DataError(
                f"features of structure {i} have shape {a.shape}, expected (n_atoms, d)",
                record=i,
                fix="pass one 2-D array per structure",
            )
        if a.shape[0] == 0:
            raise DataError(f"structure {i} has no atoms (0 feature rows)", record=i, fix="drop empty structures")
        if dim is None:
            dim = a.shape[1]
        elif a.shape[1] != dim:
            raise DataError(
                f"features of structure {i} have width {a.shape[1]}, expected {dim} like the first structure",
                record=i,
                fix="use one extractor for all structures",
            )
    if how == "flat":
        return np.concatenate(arrays, axis=0)
    reduce = {"mean": np.mean, "sum": np.sum, "max": np.max}[how]
    return np.stack([reduce(a, axis=0) for a in arrays], axis=0)


__all__ = [
    "AGGREGATIONS",
    "DEFAULT_EXTRACTOR",
    "EXTRACTORS",
    "FeatureExtractor",
    "aggregate",
    "get_extractor",
    "register_extractor",
]
