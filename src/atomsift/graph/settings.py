"""Neighbour-graph settings of the paper, per dataset (docs/method.md sections 3 and 4).

settings = graph_settings_for("oc20")           # GraphSettings(cutoff=12.0, max_neighbors=30, pbc=True)
graph = radius_graph(batch, settings.cutoff, settings.max_neighbors, pbc=settings.pbc)
"""

from __future__ import annotations

from dataclasses import dataclass

from atomsift.errors import ConfigError


@dataclass(frozen=True)
class GraphSettings:
    """How to build a dataset's neighbour graph.

    Attributes:
        cutoff: radius, A.
        max_neighbors: nearest neighbours kept per atom.
        pbc: True to use the structures' periodic cells; False to treat them as molecules.
    """

    cutoff: float
    max_neighbors: int
    pbc: bool

    def __post_init__(self) -> None:
        if not self.cutoff > 0:
            raise ConfigError(f"graph cutoff must be positive, got {self.cutoff}", fix="use a cutoff in A, e.g. 12.0")
        if int(self.max_neighbors) != self.max_neighbors or self.max_neighbors < 1:
            raise ConfigError(f"max_neighbors must be a positive integer, got {self.max_neighbors}", fix="use e.g. 30")

    def describe(self) -> str:
        """'7 A / 100' (cutoff / neighbour limit), with ' / pbc' for periodic graphs, as the plans print it."""
        return f"{self.cutoff:g} A / {self.max_neighbors}" + (" / pbc" if self.pbc else "")


_MOLECULE_8 = GraphSettings(cutoff=8.0, max_neighbors=30, pbc=False)  # ANI-1x, Transition-1x, QM9
_OC_12 = GraphSettings(cutoff=12.0, max_neighbors=30, pbc=True)  # OC20, OC22 (periodic slabs)
_MD22 = GraphSettings(cutoff=12.0, max_neighbors=30, pbc=False)
_RMD17 = GraphSettings(cutoff=7.0, max_neighbors=100, pbc=False)
# The paper gives QMOF only "19 A, periodic" and MatBench "12 A, periodic", no neighbour limit:
# we use 30, the limit of every other task in the paper.
_QMOF = GraphSettings(cutoff=19.0, max_neighbors=30, pbc=True)
_MATBENCH = GraphSettings(cutoff=12.0, max_neighbors=30, pbc=True)
# The paper gives no graph settings for SPICE: we use 12 A / 30 (as for MD22, the other large-molecule
# force task), no periodicity.
_SPICE = GraphSettings(cutoff=12.0, max_neighbors=30, pbc=False)

DATASET_GRAPHS: dict[str, GraphSettings] = {
    # dataset names
    "ani1x": _MOLECULE_8,
    "transition1x": _MOLECULE_8,
    "oc20": _OC_12,
    "oc22": _OC_12,
    "rmd17": _RMD17,
    "md17": _RMD17,  # not in the paper; the revised MD17 settings (otherwise the 'sgdml' alias would apply)
    "md22": _MD22,
    "qm9": _MOLECULE_8,
    "qmof": _QMOF,
    "matbench": _MATBENCH,
    "spice": _SPICE,
    # reader format names (atomsift.data.registry.FORMATS) that belong to one of the above
    "oc-lmdb": _OC_12,
    "oc20-extxyz": _OC_12,
    "sgdml": _MD22,
    "qm9-xyz": _MOLECULE_8,
    "qm9-pyg": _MOLECULE_8,
    "qm9pack": _MOLECULE_8,
}
"""Paper graph settings by dataset name and by reader format name."""


def graph_settings_for(name: str) -> GraphSettings:
    """The paper's graph settings for a dataset or reader format name (case-insensitive, '_' == '-').

    Registry aliases are understood too ('t1x', 'ani-1x', 'oc20-lmdb', ...).
    """
    key = name.strip().lower().replace("_", "-")
    if key in DATASET_GRAPHS:
        return DATASET_GRAPHS[key]
    from atomsift.data.registry import ALIASES

    alias = ALIASES.get(key)
    if alias is not None and alias in DATASET_GRAPHS:
        return DATASET_GRAPHS[alias]
    raise ConfigError(
        f"no paper graph settings for '{name}'",
        fix=f"use one of: {', '.join(DATASET_GRAPHS)}; for other data give the cutoff, max_neighbors "
        "and pbc explicitly",
    )
