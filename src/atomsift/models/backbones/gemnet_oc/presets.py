"""Named GemNet-OC hyperparameter sets (keyword arguments of ``GemNetOC``).

"S" and "L" are the paper's backbones (docs/method.md, section 3), equal to JMP-S / JMP-L
(JMP's ``BackboneConfig.base()`` / ``.large()``): 38,873,088 and 216,416,256 backbone parameters, the
same as fairchem's GemNetOC with these settings minus its two output layers (the paper quotes ~30M / ~235M).
"small" and "tiny" are for CPU work and tests: every interaction is on so every code path runs. "small"
keeps the OC20 neighbour limits at 6 A; "tiny" (cutoffs 4.5 / 3.5 / 4.0 / 5.0 A for main / qint /
aeaint / aint) has neighbour limits (200) no atom reaches at solid densities, so its graphs are plain radius
graphs and symmetry checks (supercells included) hold exactly.

Graph settings of S and L: JMP's OC20 / OC22 graph, 12 A for all four graphs (its
``Cutoffs.from_constant(12.0)``) and neighbour limits main 30, qint 8, aeaint 20, aint 1000 (its
``MaxNeighbors.from_goc_base_proportions(30)``, documented there as the proportions of GemNet-OC's base
OC20 config), periodic, strict limits (fairchem's default).
For molecules (ANI-1x, Transition-1x, QM9) JMP uses 8 A with the same proportions; override ``cutoff*``.

Tags: S and L use JMP's ``qint_tags = [1, 2]``; JMP gives every atom of a non-OC20 structure tag 2, so
structures without OC20 tags must carry tag 2 to get quadruplet interactions (the model warns when no atom
of a batch has a tag in qint_tags). "small" and "tiny" use [0, 1, 2] (quadruplets everywhere).
"""

from __future__ import annotations

from typing import Any

_OC20_GRAPH: dict[str, Any] = {
    "cutoff": 12.0,
    "cutoff_qint": 12.0,
    "cutoff_aeaint": 12.0,
    "cutoff_aint": 12.0,
    "max_neighbors": 30,
    "max_neighbors_qint": 8,
    "max_neighbors_aeaint": 20,
    "max_neighbors_aint": 1000,
    "enforce_max_neighbors_strictly": True,
    "use_pbc": True,
}

_SHARED: dict[str, Any] = {
    "num_spherical": 7,
    "num_radial": 128,
    "num_before_skip": 2,
    "num_after_skip": 2,
    "num_atom": 3,
    "num_output_afteratom": 3,
    "num_atom_emb_layers": 2,
    "num_global_out_layers": 2,
    "rbf": {"name": "gaussian"},
    "envelope": {"name": "polynomial", "exponent": 5},
    "cbf": {"name": "spherical_harmonics"},
    "sbf": {"name": "legendre_outer"},
    "quad_interaction": True,
    "atom_edge_interaction": True,
    "edge_atom_interaction": True,
    "atom_interaction": True,
    "num_elements": 120,
    "direct_forces": True,
    "activation": "silu",  # fairchem's "silu" is the scaled SiLU (JMP calls it "scaled_silu")
    "scale_basis": False,
    "qint_tags": [1, 2],
    **_OC20_GRAPH,
}

PRESETS: dict[str, dict[str, Any]] = {
    "S": {
        **_SHARED,
        "num_blocks": 4,
        "emb_size_atom": 256,
        "emb_size_edge": 512,
        "emb_size_trip_in": 64,
        "emb_size_trip_out": 64,
        "emb_size_quad_in": 32,
        "emb_size_quad_out": 32,
        "emb_size_aint_in": 64,
        "emb_size_aint_out": 64,
        "emb_size_rbf": 16,
        "emb_size_cbf": 16,
        "emb_size_sbf": 32,
        "num_concat": 1,
    },
    "L": {
        **_SHARED,
        "num_blocks": 6,
        "emb_size_atom": 256,
        "emb_size_edge": 1024,
        "emb_size_trip_in": 64,
        "emb_size_trip_out": 128,
        "emb_size_quad_in": 64,
        "emb_size_quad_out": 32,
        "emb_size_aint_in": 64,
        "emb_size_aint_out": 64,
        "emb_size_rbf": 32,
        "emb_size_cbf": 16,
        "emb_size_sbf": 64,
        "num_concat": 4,
    },
    "small": {
        **_SHARED,
        "num_spherical": 5,
        "num_radial": 32,
        "num_blocks": 3,
        "emb_size_atom": 64,
        "emb_size_edge": 128,
        "emb_size_trip_in": 32,
        "emb_size_trip_out": 32,
        "emb_size_quad_in": 16,
        "emb_size_quad_out": 16,
        "emb_size_aint_in": 32,
        "emb_size_aint_out": 32,
        "emb_size_rbf": 16,
        "emb_size_cbf": 16,
        "emb_size_sbf": 16,
        "num_concat": 1,
        "num_atom": 2,
        "num_output_afteratom": 2,
        "num_atom_emb_layers": 1,
        "qint_tags": [0, 1, 2],
        "cutoff": 6.0,
        "cutoff_qint": 6.0,
        "cutoff_aeaint": 6.0,
        "cutoff_aint": 6.0,
    },
    "tiny": {
        **_SHARED,
        "num_spherical": 3,
        "num_radial": 8,
        "num_blocks": 2,
        "emb_size_atom": 32,
        "emb_size_edge": 64,
        "emb_size_trip_in": 8,
        "emb_size_trip_out": 8,
        "emb_size_quad_in": 8,
        "emb_size_quad_out": 8,
        "emb_size_aint_in": 8,
        "emb_size_aint_out": 8,
        "emb_size_rbf": 8,
        "emb_size_cbf": 8,
        "emb_size_sbf": 8,
        "num_before_skip": 1,
        "num_after_skip": 1,
        "num_concat": 1,
        "num_atom": 1,
        "num_output_afteratom": 1,
        "num_atom_emb_layers": 1,
        "num_global_out_layers": 1,
        "qint_tags": [0, 1, 2],
        "cutoff": 4.5,
        "cutoff_qint": 3.5,
        "cutoff_aeaint": 4.0,
        "cutoff_aint": 5.0,
        # limits above any atom's count within 5 A at solid densities: plain radius graphs
        "max_neighbors": 200,
        "max_neighbors_qint": 200,
        "max_neighbors_aeaint": 200,
        "max_neighbors_aint": 200,
    },
}
"""Preset name -> GemNetOC keyword arguments."""
