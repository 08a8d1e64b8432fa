"""PaiNN backbone: shapes, dtypes, hyperparameters, bad inputs, and no compiled graph libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms

from atomsift.errors import ConfigError, DataError
from atomsift.graph import collate
from atomsift.models.backbones.painn import PaiNN
from atomsift.models.base import Backbone


def tiny(**kwargs) -> PaiNN:
    torch.manual_seed(0)
    return PaiNN(**{"hidden": 8, "num_layers": 2, "num_rbf": 6, **kwargs})


def test_defaults_and_hparams_rebuild():
    model = PaiNN()
    assert isinstance(model, Backbone) and model.name == "painn"
    assert model.node_dim == 128 and model.edge_dim is None and model.num_elements == 119
    hp = model.hparams()
    assert hp == json.loads(json.dumps(hp))
    assert hp["num_layers"] == 3 and hp["num_rbf"] == 20 and hp["cutoff"] == 5.0 and hp["max_neighbors"] is None
    rebuilt = PaiNN(**hp)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert "rbf_frequencies" not in model.state_dict()  # derived from cutoff, not stored


def test_output_shapes(ethanol, oxides):
    model = tiny()
    structures = [ethanol[0], oxides[0], oxides[1]]
    batch = collate(structures)
    out = model(batch)
    n = sum(len(a) for a in structures)
    assert out.node.shape == (n, 8) and out.node.dtype == torch.float32
    assert out.vector is not None and out.vector.shape == (n, 3, 8)
    assert out.edge is None and out.edge_index is None
    assert torch.isfinite(out.node).all() and torch.isfinite(out.vector).all()


def test_float64(ethanol, silicon):
    model = tiny().double()
    out = model(collate([ethanol[0], silicon], dtype=torch.float64))
    assert out.node.dtype == torch.float64 and out.vector.dtype == torch.float64


def test_float32_model_on_float64_batch_computes_in_model_dtype(ethanol):
    out = tiny()(collate([ethanol[0]], dtype=torch.float64))
    assert out.node.dtype == torch.float32


def test_single_atom_structure_is_allowed(ethanol):
    lone = Atoms("Ar", positions=[[0.0, 0.0, 0.0]])
    lone.info["atomsift_id"] = "argon"
    out = tiny()(collate([lone, ethanol[0]]))
    assert out.node.shape == (1 + len(ethanol[0]), 8)
    assert torch.equal(out.vector[0], torch.zeros(3, 8))  # no neighbours, no vector features


def test_shared_filters_and_max_neighbors(ethanol):
    batch = collate([ethanol[0]])
    shared = tiny(shared_filters=True)
    assert shared.filter_net.out_features == 3 * 8
    assert tiny().filter_net.out_features == 2 * 3 * 8
    full = tiny()(batch).node
    limited = tiny(max_neighbors=2)(batch).node
    assert full.shape == limited.shape and not torch.allclose(full, limited)
    shared(batch)


@pytest.mark.parametrize("activation", ["silu", "ssp", "gelu", "tanh"])
def test_activations(activation, ethanol):
    out = tiny(activation=activation)(collate([ethanol[0]]))
    assert torch.isfinite(out.node).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"activation": "relu6"},
        {"hidden": 0},
        {"hidden": 8.5},
        {"num_layers": True},
        {"cutoff": -1.0},
        {"cutoff": float("inf")},
        {"max_neighbors": 0},
        {"num_elements": 1},
    ],
)
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ConfigError):
        tiny(**kwargs)


def test_unknown_element_names_record(ethanol, oxides):
    model = tiny(num_elements=10)  # embeds H..F; the oxides hold metals
    with pytest.raises(DataError) as info:
        model(collate([ethanol[0], oxides[0]]))
    assert oxides[0].info["atomsift_id"] in str(info.value)
    batch = collate([ethanol[0], ethanol[1]])
    batch.numbers[len(ethanol[0]) + 2] = 0
    with pytest.raises(DataError, match="outside") as info:
        model(batch)
    assert ethanol[1].info["atomsift_id"] in str(info.value)


def test_nan_position_names_record(ethanol):
    batch = collate([ethanol[0], ethanol[1], ethanol[2]])
    batch.positions[2 * len(ethanol[0]) + 1, 1] = float("nan")
    with pytest.raises(DataError, match="non-finite") as info:
        tiny()(batch)
    assert ethanol[2].info["atomsift_id"] in str(info.value)


def test_no_neighbours_names_record(ethanol):
    far = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    far.info["atomsift_id"] = "far-apart"
    with pytest.raises(DataError, match="neighbour") as info:
        tiny(cutoff=5.0)(collate([ethanol[0], far]))
    assert "far-apart" in str(info.value)


def test_overlapping_atoms_names_record():
    twin = Atoms("H3", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.7, 0.0, 0.0]])
    twin.info["atomsift_id"] = "twin"
    try:
        batch = collate([twin])
    except DataError as error:  # the batcher may refuse overlapping atoms itself
        assert "twin" in str(error)
        return
    with pytest.raises(DataError) as info:
        tiny()(batch)
    assert "twin" in str(info.value)


def test_gradient_reaches_positions(ethanol):
    model = tiny()
    batch = collate([ethanol[0]])
    batch.positions.requires_grad_(True)
    energy = model(batch).node.sum()
    (grad,) = torch.autograd.grad(energy, batch.positions)
    assert grad.shape == batch.positions.shape and float(grad.abs().sum()) > 0
    assert np.isfinite(grad.numpy()).all()


def test_no_compiled_graph_libraries_imported():
    code = (
        "import sys, atomsift.models.backbones.painn, atomsift.graph; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch_geometric', 'torch_scatter', 'torch_sparse', 'torch_cluster')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
