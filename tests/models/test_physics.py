"""Physics checks every backbone must pass, in float64, through a minimal local energy readout.

Energy E = sum over atoms of Linear(node_dim -> 1)(node embedding); forces F = -dE/dx by autograd. Checked:
rotation / translation / permutation symmetry (molecules and periodic cells), forces against central finite
differences, batched == one at a time, a periodic cell against its 2x2x2 supercell, invariance of the node
embeddings (and rotation of vector features where a backbone has them), and double backward for training.

Add a backbone by adding a tiny, seeded factory to BACKBONES; its cutoff should exceed 3.84 A (the lattice
vectors of the `silicon` fixture) so that periodic images matter.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from ase import Atoms
from scipy.spatial.transform import Rotation
from torch import Tensor, nn

from atomsift.graph import AtomsBatch, collate
from atomsift.models.backbones.painn import PaiNN
from atomsift.models.base import Backbone, BackboneOutput


def _painn() -> Backbone:
    return PaiNN(hidden=16, num_layers=2, num_rbf=8, cutoff=4.5)


def _gemnet_oc() -> Backbone:
    from atomsift.models.backbones.gemnet_oc.model import GemNetOC

    torch.manual_seed(0)
    return GemNetOC.from_preset("tiny", direct_forces=False)  # the edge output branch is unused by -dE/dx


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "painn": _painn,
    "gemnet_oc": _gemnet_oc,
}


class EnergyModel(nn.Module):
    """Backbone + per-atom linear energy summed per structure."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.readout = nn.Linear(backbone.node_dim, 1)
        nn.init.normal_(self.readout.weight)

    def forward(self, batch: AtomsBatch, create_graph: bool = False) -> tuple[Tensor, Tensor, BackboneOutput]:
        """(energy (B,), forces (N, 3), backbone output); positions are made a leaf that requires grad."""
        batch.positions = batch.positions.detach().clone().requires_grad_(True)
        out = self.backbone(batch)
        per_atom = self.readout(out.node).squeeze(-1)
        energy = per_atom.new_zeros(batch.num_structures).index_add_(0, batch.batch, per_atom)
        (grad,) = torch.autograd.grad(energy.sum(), batch.positions, create_graph=create_graph)
        return energy, -grad, out


@pytest.fixture(scope="module", params=list(BACKBONES))
def model(request: pytest.FixtureRequest) -> EnergyModel:
    torch.manual_seed(0)
    return EnergyModel(BACKBONES[request.param]()).double().eval()


def run(model: EnergyModel, structures: list[Atoms]) -> tuple[Tensor, Tensor, BackboneOutput]:
    energy, forces, out = model(collate(structures, dtype=torch.float64))
    return energy.detach(), forces.detach(), out


def _structure(name: str, ethanol: list[Atoms], oxides: list[Atoms], silicon: Atoms, triclinic: Atoms) -> Atoms:
    return {"molecule": ethanol[0], "oxide": oxides[1], "silicon": silicon, "triclinic": triclinic}[name]


STRUCTURES = ["molecule", "oxide", "silicon", "triclinic"]


def _close(a: Tensor, b: Tensor, tol: float = 1e-10) -> None:
    scale = max(1.0, float(b.abs().max()))
    torch.testing.assert_close(a, b, rtol=0.0, atol=tol * scale)


@pytest.mark.parametrize("name", STRUCTURES)
def test_rotation(model, name, ethanol, oxides, silicon, triclinic, geometry):
    atoms = _structure(name, ethanol, oxides, silicon, triclinic)
    energy, forces, out = run(model, [atoms])
    assert float(forces.abs().max()) > 1e-3, "forces vanish: the check would prove nothing"
    for seed in (1, 2):
        rot = Rotation.random(random_state=seed).as_matrix()
        r = torch.as_tensor(rot)
        energy_r, forces_r, out_r = run(model, [geometry.rotate(atoms, rot)])
        _close(energy_r, energy)
        _close(forces_r, forces @ r.T)
        _close(out_r.node.detach(), out.node.detach())
        if out.vector is not None:  # v' = R v, channel by channel
            _close(out_r.vector.detach(), torch.einsum("ij,njf->nif", r, out.vector.detach()))


@pytest.mark.parametrize("name", STRUCTURES)
def test_translation(model, name, ethanol, oxides, silicon, triclinic, geometry):
    atoms = _structure(name, ethanol, oxides, silicon, triclinic)
    energy, forces, out = run(model, [atoms])
    shift = np.array([1.3, -2.1, 0.7])
    for wrap in (False, True) if atoms.pbc.all() else (False,):  # wrapping into the cell changes nothing
        energy_t, forces_t, out_t = run(model, [geometry.translate(atoms, shift, wrap=wrap)])
        _close(energy_t, energy)
        _close(forces_t, forces)
        _close(out_t.node.detach(), out.node.detach())


@pytest.mark.parametrize("name", STRUCTURES)
def test_permutation(model, name, ethanol, oxides, silicon, triclinic, geometry):
    atoms = _structure(name, ethanol, oxides, silicon, triclinic)
    energy, forces, out = run(model, [atoms])
    order = np.random.default_rng(7).permutation(len(atoms))
    if np.all(order == np.arange(len(atoms))):
        order = order[::-1].copy()
    energy_p, forces_p, out_p = run(model, [geometry.permute(atoms, order)])
    index = torch.as_tensor(order)
    _close(energy_p, energy)
    _close(forces_p, forces[index])
    _close(out_p.node.detach(), out.node.detach()[index])


@pytest.mark.parametrize("name", ["molecule", "triclinic"])
def test_forces_match_finite_differences(model, name, ethanol, oxides, silicon, triclinic):
    atoms = _structure(name, ethanol, oxides, silicon, triclinic)
    batch = collate([atoms], dtype=torch.float64)
    _, forces, _ = model(batch)
    h = 1e-5
    with torch.no_grad():
        for atom in (0, len(atoms) // 2, len(atoms) - 1):
            for k in range(3):
                energies = []
                for step in (h, -h):
                    moved = atoms.copy()
                    moved.positions[atom, k] += step
                    energies.append(run_energy(model, moved))
                numeric = -(energies[0] - energies[1]) / (2 * h)
                assert abs(float(forces[atom, k]) - numeric) < 1e-6 * max(1.0, abs(numeric)), (atom, k)


def run_energy(model: EnergyModel, atoms: Atoms) -> float:
    """Energy only, without building a graph for forces."""
    batch = collate([atoms], dtype=torch.float64)
    out = model.backbone(batch)
    return float(model.readout(out.node).sum())


def test_batched_equals_one_at_a_time(model, ethanol, oxides, silicon, triclinic):
    structures = [ethanol[0], oxides[0], silicon, ethanol[1], triclinic, oxides[1], ethanol[2]]
    energy, forces, out = run(model, structures)
    start = 0
    for i, atoms in enumerate(structures):
        e, f, o = run(model, [atoms])
        n = len(atoms)
        _close(energy[i : i + 1], e)
        _close(forces[start : start + n], f)
        _close(out.node.detach()[start : start + n], o.node.detach())
        start += n


@pytest.mark.parametrize("name", ["silicon", "triclinic"])
def test_supercell(model, name, ethanol, oxides, silicon, triclinic, geometry):
    atoms = _structure(name, ethanol, oxides, silicon, triclinic)
    energy, forces, out = run(model, [atoms])
    energy_s, forces_s, out_s = run(model, [geometry.supercell(atoms, (2, 2, 2))])
    _close(energy_s, 8 * energy)
    _close(forces_s.reshape(8, len(atoms), 3), forces.expand(8, -1, -1))
    _close(out_s.node.detach().reshape(8, len(atoms), -1), out.node.detach().expand(8, -1, -1))


def test_double_backward(model, ethanol, silicon):
    """A loss on gradient forces back-propagates to every parameter, and that gradient is the right one."""
    batch = collate([ethanol[0], silicon], dtype=torch.float64)
    reference = torch.randn(batch.num_atoms, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_fn() -> Tensor:
        energy, forces, _ = model(batch, create_graph=True)
        return (forces - reference).square().mean() + 1e-3 * energy.square().mean()

    model.zero_grad()
    loss_fn().backward()
    grads = [p.grad for p in params]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) >= 0.9 * len(grads)

    # directional finite difference in parameter space checks the double-backward values
    gen = torch.Generator().manual_seed(1)
    directions = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions))
    h = 1e-6
    values = []
    with torch.no_grad():
        originals = [p.detach().clone() for p in params]
    for step in (h, -h):
        with torch.no_grad():
            for p, p0, d in zip(params, originals, directions):
                p.copy_(p0 + step * d)
        values.append(float(loss_fn().detach()))
    with torch.no_grad():
        for p, p0 in zip(params, originals):
            p.copy_(p0)
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric))
    model.zero_grad()
