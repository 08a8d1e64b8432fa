"""SOAP descriptors (dscribe): a training-free baseline for CSI.

Settings (defaults): r_cut 5 A, n_max 6, l_max 4, gaussian sigma 0.5 A, GTO radial basis, no weighting,
float64; periodic where a structure has pbc (per direction, from the record), else not.

"soap" -- element-agnostic power spectrum (dscribe compression mode "mu2"):
    p_{n n' l} = sum_m c_{nlm} c_{n'lm},  c_{nlm} = sum_Z c^Z_{nlm},   n <= n'
  i.e. the power spectrum of the neighbour density with every atom counted alike, which equals the sum of
  the species-resolved spectra p^{Z Z'}_{n n' l} over all ordered species pairs (the average over the pair
  channels times the constant number of pairs). d = n_max (n_max + 1) / 2 (l_max + 1) = 21 * 5 = 105, for
  any species. The values do not depend on the `species` option either, so it is optional here: it only
  restricts which elements are accepted (default: every element, H..Og). `species_weighting` (a dict
  element -> weight, dscribe's option) weights each element's density before the sum, putting some
  chemistry back in; it enters the settings hash.
"soap-full" -- the whole species-resolved power spectrum (dscribe compression "off"):
  d = S n_max (S n_max + 1) / 2 (l_max + 1) for S species (S = 3: 855; S = 10: 9150). `species` is
  required and must be fixed up front, the same for every dataset compared (the CSI pipeline passes the
  union of the elements of all datasets), since both the width and the layout depend on it.

weights_hash = sha256 of the canonical JSON of the settings (mode, r_cut, n_max, l_max, sigma, rbf, and for
"soap-full" the sorted species; for "soap" the weighting when given), plus the dscribe version.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from atomsift.csi.extract import FeatureExtractor, check_geometry, missing_package, offline_guards, sha256_settings
from atomsift.data.record import MAX_Z, Record
from atomsift.errors import ConfigError


def _to_numbers(species: Sequence[str | int], option: str = "species") -> list[int]:
    from ase.data import atomic_numbers

    out: set[int] = set()
    for s in species:
        if isinstance(s, str) and not s.strip().isdigit():
            z = atomic_numbers.get(s.strip().capitalize())
            if z is None or z == 0:
                raise ConfigError(
                    f"unknown element '{s}' in the SOAP option `{option}`",
                    fix="use symbols like 'H', 'Pt' or atomic numbers",
                )
        else:
            z = int(s)
        if not 1 <= z <= MAX_Z:
            raise ConfigError(
                f"atomic number {z} in the SOAP option `{option}` is outside 1..{MAX_Z}", fix="use real elements"
            )
        out.add(z)
    if not out:
        raise ConfigError(f"the SOAP option `{option}` is empty", fix="list the elements, e.g. species=['H', 'C', 'O']")
    return sorted(out)


class SOAPExtractor(FeatureExtractor):
    """Per-atom SOAP power spectra; see the module docstring for the two modes and their dimensions.

    Args:
        species: elements (symbols or atomic numbers); required when full=True.
        full: keep the species-resolved spectrum ("soap-full") instead of the element-agnostic one ("soap").
        r_cut, n_max, l_max, sigma: dscribe SOAP settings (A, -, -, A).
        species_weighting: "soap" only; element -> weight of its density.
        device: accepted for uniformity with the model extractors; dscribe always runs on the CPU (a warning
            says so when another device is asked for).
    """

    csi_units = "squared SOAP power-spectrum units (dscribe's normalisation)"

    def __init__(
        self,
        *,
        species: Sequence[str | int] | None = None,
        full: bool = False,
        r_cut: float = 5.0,
        n_max: int = 6,
        l_max: int = 4,
        sigma: float = 0.5,
        species_weighting: dict[str | int, float] | None = None,
        device: str = "cpu",
    ) -> None:
        offline_guards()
        if str(device) != "cpu":
            warnings.warn(f"SOAP (dscribe) runs on the CPU; device={device!r} is not used", stacklevel=3)
        try:
            import dscribe
            from dscribe.descriptors import SOAP
        except ImportError as exc:
            raise missing_package("dscribe", "soap", "soap-full" if full else "soap") from exc
        self.name = "soap-full" if full else "soap"
        if isinstance(species, str):  # "H,C,O" or "H C O" from a command line or a config file
            species = [s for s in species.replace(",", " ").split() if s]
        elif isinstance(species, int):
            species = [species]
        if full and species is None:
            raise ConfigError(
                "the 'soap-full' extractor needs the option `species` (its feature layout depends on it)",
                fix="pass species=[...] with the union of the elements of all datasets compared, the same for "
                "upstream and downstream (or use 'soap', whose width does not depend on species)",
            )
        numbers = _to_numbers(species) if species is not None else list(range(1, MAX_Z + 1))
        if full and species_weighting:
            raise ConfigError("species_weighting applies to 'soap' only", fix="drop it for 'soap-full'")
        compression: dict[str, Any] = {"mode": "off" if full else "mu2", "species_weighting": None}
        weighting: dict[int, float] | None = None
        if species_weighting:
            weighting = {}
            for key, value in species_weighting.items():
                (z,) = _to_numbers([key], "species_weighting")
                weighting[z] = float(value)
            missing = [z for z in numbers if z not in weighting]
            if missing:
                if species is None:  # weights given for some elements: accept exactly those
                    numbers = sorted(weighting)
                else:
                    raise ConfigError(
                        f"species_weighting has no weight for atomic number(s) {missing}",
                        fix="give a weight for every element of `species`",
                    )
            compression["species_weighting"] = {z: weighting[z] for z in numbers}
        kwargs = dict(r_cut=float(r_cut), n_max=int(n_max), l_max=int(l_max), sigma=float(sigma), rbf="gto")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                self._soap = {
                    periodic: SOAP(
                        species=numbers, periodic=periodic, compression=compression, dtype="float64", **kwargs
                    )
                    for periodic in (False, True)
                }
        except ValueError as exc:
            raise ConfigError(
                f"invalid SOAP settings: {exc}", fix="check r_cut > 1, n_max >= 1, l_max >= 0, sigma > 0"
            ) from exc
        self.supported_numbers = frozenset(numbers)
        self.dim = int(self._soap[False].get_number_of_features())
        self.settings: dict[str, Any] = {
            "mode": self.name,
            **kwargs,
            "dscribe": getattr(dscribe, "__version__", "unknown"),
        }
        if full:
            self.settings["species"] = numbers
        elif weighting:
            weights = sorted(compression["species_weighting"].items())
            self.settings["species_weighting"] = {str(z): w for z, w in weights}
        shown = f"r_cut={r_cut}, n_max={n_max}, l_max={l_max}, sigma={sigma}"
        self.layer = (
            f"SOAP power spectrum, species-resolved over {len(numbers)} species ({shown})"
            if full
            else f"SOAP power spectrum of the element-agnostic density (dscribe mu2; {shown})"
        )

    def weights_hash(self) -> str:
        return sha256_settings(self.settings)

    def features(self, records: Sequence[Record]) -> list[np.ndarray]:
        from ase import Atoms

        records = list(records)
        self.check_elements(records)
        out: list[np.ndarray] = []
        for rec in records:
            check_geometry(rec, self.name)
            pbc = np.asarray(rec.pbc, dtype=bool)
            periodic = bool(pbc.any())
            atoms = Atoms(
                numbers=np.asarray(rec.numbers),
                positions=np.asarray(rec.positions, dtype=np.float64),
                cell=np.asarray(rec.cell, dtype=np.float64) if periodic else None,
                pbc=pbc,
            )
            x = self._soap[periodic].create(atoms)
            out.append(np.asarray(x, dtype=np.float64).reshape(len(atoms), self.dim))
        return out
