"""Datasets shipped inside the package, readable as 'bundled:NAME'."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from atomsift.errors import ConfigError, did_you_mean

# name -> (file in atomsift/data/bundled, format, reader options, one-line description)
BUNDLED: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "ethanol": ("rmd17_ethanol_1000.xyz", "extxyz", {}, "1000 rMD17 ethanol frames (PBE/def2-SVP), molecule"),
    "acac": ("acac_md_300K.xyz", "extxyz", {}, "acetylacetone MD at 300 K (PBE-D3/def2-SVP), molecule"),
    "oxides": ("oxides_pbe.db", "ase-db", {}, "295 periodic SnO2/IrO2/RuO2/TiO2/VO2 structures (VASP PBE)"),
    "adsorbates": (
        "adsorbates_on_metals_structures.json",
        "adsorbates-json",
        {},
        "882 adsorption energies of 8 adsorbates on 7 fcc(111) metal slabs",
    ),
    "oc20-frame": ("oc20_adslab_frame.json", "ase-db", {}, "one OC20-style adsorbate+slab frame"),
    "ethanol-isolated-atoms": ("rmd17_ethanol_isolated_atoms.xyz", "extxyz", {}, "isolated-atom energies, ethanol set"),
    "acac-isolated-atoms": ("acac_isolated_atoms.xyz", "extxyz", {}, "isolated-atom energies, acac set"),
    # the mini-benchmark (docs/benchmark.md), made by `atomsift data make-benchmark` with default settings
    "bench-organic": (
        "benchmark/organic_gfn2.xyz",
        "extxyz",
        {},
        "600 rattled QM9 molecules, GFN2-xTB energy and forces (ANI-1x's role)",
    ),
    "bench-reactive": (
        "benchmark/reactive_md_gfn2.xyz",
        "extxyz",
        {},
        "400 frames of 1500 K GFN2-xTB MD of 20 QM9 molecules (Transition-1x's role)",
    ),
    "bench-catalysis": (
        "benchmark/catalysis_gfn1.xyz",
        "extxyz",
        {"class_key": "metal"},  # the slab's metal, as OC20's classes are bulk compositions (adsorbate ignored)
        "350 adsorbate+fcc(111) slabs, periodic GFN1-xTB energy and forces (OC20's role)",
    ),
    "bench-qm9": (
        "benchmark/qm9_downstream.xyz",
        "extxyz",
        {},
        "600 QM9 molecules (none used upstream), targets U0, U0_atom, gap, homo, lumo in eV",
    ),
}

DEMO_DATASETS = (
    "ethanol",
    "acac",
    "oxides",
    "adsorbates",
    "oc20-frame",
    "bench-organic",
    "bench-reactive",
    "bench-catalysis",
    "bench-qm9",
)
"""The bundled datasets the main job (`make demo`) reports on."""


def bundled_dir() -> Path:
    """Folder holding the bundled files (inside the installed package)."""
    return Path(str(resources.files("atomsift.data.bundled")))


def resolve_bundled(name: str) -> tuple[Path, str, dict[str, Any]]:
    """(path, format, options) of the bundled dataset `name`."""
    key = name.strip().lower()
    if key not in BUNDLED:
        raise ConfigError(
            f"no bundled dataset named '{name}'",
            fix=did_you_mean([key], BUNDLED) + f"use one of: {', '.join('bundled:' + n for n in BUNDLED)}",
        )
    filename, fmt, options, _ = BUNDLED[key]
    return bundled_dir() / filename, fmt, dict(options)
