"""Batching structures and building neighbour graphs (periodic and not): PyTorch, with vesin finding pairs on CPU.

from atomsift.graph import collate, radius_graph, graph_settings_for
batch = collate(records)
s = graph_settings_for("oc20")
graph = radius_graph(batch, s.cutoff, s.max_neighbors, pbc=s.pbc)
"""

from atomsift.graph.batch import AtomsBatch, collate
from atomsift.graph.neighbors import NeighborGraph, edge_vectors, limit_neighbors, radius_graph
from atomsift.graph.settings import DATASET_GRAPHS, GraphSettings, graph_settings_for

__all__ = [
    "DATASET_GRAPHS",
    "AtomsBatch",
    "GraphSettings",
    "NeighborGraph",
    "collate",
    "edge_vectors",
    "graph_settings_for",
    "limit_neighbors",
    "radius_graph",
]
