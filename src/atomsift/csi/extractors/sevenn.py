"""SevenNet-0 features: the invariant (l = 0) node channels after the last interaction block.

SevenNet-0 (11 Jul 2024 weights, shipped inside the `sevenn` wheel) is a NequIP-style model with five
interaction blocks; each ends with an equivariant gate. The last gate (`4_equivariant_gate`) outputs
128x0e: 128 scalar channels per atom, which the readout (`reduce_input_to_hidden` 128 -> 64,
`reduce_hidden_to_energy` 64 -> 1, species-wise rescale, sum) turns into the energy. The extractor deletes
every module after that gate (readout and the autograd force/stress module), so a forward pass runs only the
representation layers, in eval mode under `torch.no_grad`. Graphs are built by sevenn's own code
(`sevenn.train.dataload.unlabeled_atoms_to_graph`, cutoff 5 A; for non-periodic directions it puts the atoms in
a box much larger than the cutoff itself) and batched with torch_geometric like sevenn's own inference script.
`_readout_energy` runs the deleted readout on the features; the tests check it reproduces SevenNetCalculator.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.csi.extract import FileWeightsExtractor, check_geometry, missing_package, offline_guards
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

HUGE_CELL_A = 500.0
"""A periodic cell vector longer than this (A) is warned about: sevenn's neighbour search grows with the cell."""
DEFAULT_CHECKPOINT = "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth"
"""SevenNet-0 weights, relative to the installed `sevenn` package."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the noise of building the model (e3nn's torch.jit.script deprecation, sevenn's accelerator hint)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*accelerator.*")
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        yield


class SevenNetExtractor(FileWeightsExtractor):
    """Per-atom 128-d invariant features of SevenNet-0 (or another single-modal sevenn checkpoint).

    Args:
        checkpoint: path to a sevenn checkpoint; None = SevenNet-0 from the installed wheel.
        device: torch device ("cpu", "cuda", ...).
        batch_size: structures per forward pass.
    """

    csi_units = "squared activations (dimensionless)"

    def __init__(
        self, *, checkpoint: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 32
    ) -> None:
        offline_guards()
        try:
            with _quiet():
                import sevenn
                import sevenn._keys as KEY
                import sevenn.util as sevenn_util
                import torch
                from sevenn.atom_graph_data import AtomGraphData
                from sevenn.train.dataload import unlabeled_atoms_to_graph
                from torch_geometric.data import Batch
        except ImportError as exc:  # sevenn, or one of its dependencies (e3nn, torch_geometric)
            raise missing_package(getattr(exc, "name", None) or "sevenn", "sevenn", "sevenn") from exc
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", fix="use e.g. batch_size=32")
        self._torch = torch
        self._KEY = KEY
        self._AtomGraphData = AtomGraphData
        self._to_graph = unlabeled_atoms_to_graph
        self._Batch = Batch
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

        if checkpoint is None:
            path = Path(sevenn.__file__).parent / DEFAULT_CHECKPOINT
            self.name = "sevenn-0"
        else:
            path = Path(checkpoint).expanduser()
            self.name = f"sevenn-{path.stem}"
        if not path.is_file():
            raise ConfigError(
                f"SevenNet checkpoint not found: {path}",
                file=path,
                fix="reinstall sevenn (pip install --force-reinstall atomsift[sevenn])"
                if checkpoint is None
                else "give the path of a sevenn checkpoint (.pth) file",
            )
        self.weights_path = path

        with _quiet():
            cp = sevenn_util.load_checkpoint(str(path))
            model = cp.build_model()
        if getattr(model, "modal_map", None):
            raise ConfigError(
                f"{path.name} is a multi-fidelity sevenn model; the CSI extractor supports single-modal ones",
                file=path,
                fix="use SevenNet-0 (the default) or another single-modal checkpoint",
            )
        self.cutoff = float(cp.config[KEY.CUTOFF])
        self.type_map: dict[int, int] = {int(z): int(i) for z, i in cp.config[KEY.TYPE_MAP].items()}
        self.supported_numbers = frozenset(self.type_map)

        # Cut the model after its last equivariant gate: what follows is the readout and the force module.
        names = list(model._modules)
        gates = [n for n in names if n.endswith("_equivariant_gate")]
        if not gates:
            raise ConfigError(f"{path.name} has no equivariant gate module; not a NequIP-style sevenn model", file=path)
        last_gate = gates[-1]
        cut = names.index(last_gate) + 1
        irreps = model._modules[last_gate].gate.irreps_out
        self._scalar_slices = [sl for (mul, ir), sl in zip(irreps, irreps.slices()) if ir.l == 0]
        self.dim = int(sum(mul for mul, ir in irreps if ir.l == 0))
        self._head = [(n, model._modules[n]) for n in names[cut:] if n != "force_output"]
        for n in names[cut:]:
            model.delete_module_by_key(n)
        model.set_is_batch_data(True)
        for _, module in self._head:
            if hasattr(module, "_is_batch_data"):
                module._is_batch_data = True
        model.eval()
        for _, module in self._head:
            module.eval()
        self._model = model.to(self.device)
        self._head = [(n, m.to(self.device)) for n, m in self._head]
        readout = names[cut] if cut < len(names) else "none"
        self.layer = f"{last_gate} ({irreps}; l=0 channels, input of the readout {readout})"

    # -- graphs ---------------------------------------------------------------------------------------------------
    def _graph(self, rec: Record) -> Any:
        from ase import Atoms

        check_geometry(rec, self.name)
        pbc = np.asarray(rec.pbc, dtype=bool)
        positions = np.asarray(rec.positions, dtype=np.float64)
        if not pbc.any():
            # A molecule: centre it (features are translation invariant) so sevenn's box, which grows with
            # max |position|, stays small. sevenn replaces the cell of non-periodic directions by that box.
            positions = positions - positions.mean(axis=0)
            cell = np.zeros((3, 3))
        else:
            cell = np.asarray(rec.cell, dtype=np.float64)
            longest = float(np.linalg.norm(cell[pbc], axis=1).max())
            if longest > HUGE_CELL_A and not getattr(self, "_warned_huge_cell", False):
                self._warned_huge_cell = True
                warnings.warn(
                    f"structure {rec.id} has a periodic cell vector of {longest:.0f} A: sevenn's neighbour search "
                    "takes memory with the cell's size (measured: 0.7 GB at 1,000 A, 4.5 GB at 10,000 A); a "
                    "molecule in a box should be read without periodicity (pbc false)",
                    UserWarning,
                    stacklevel=2,
                )
        atoms = Atoms(numbers=np.asarray(rec.numbers), positions=positions, cell=cell, pbc=pbc)
        try:
            return self._AtomGraphData.from_numpy_dict(self._to_graph(atoms, self.cutoff))
        except Exception as exc:  # neighbour-list failures: name the record
            raise DataError(
                f"sevenn could not build the graph of this structure: {exc}",
                record=rec.id,
                fix="check its cell and positions",
            ) from exc

    def _forward(self, records: Sequence[Record]) -> Any:
        batch = self._Batch.from_data_list([self._graph(r) for r in records]).to(self.device)
        with _quiet():
            return self._model(batch)

    def _node_features(self, data: Any) -> Any:
        x = data[self._KEY.NODE_FEATURE]
        if len(self._scalar_slices) == 1 and self._scalar_slices[0] == slice(0, x.shape[1]):
            return x
        return self._torch.cat([x[:, sl] for sl in self._scalar_slices], dim=1)

    # -- public ---------------------------------------------------------------------------------------------------
    def features(self, records: Sequence[Record]) -> list[np.ndarray]:
        records = list(records)
        self.check_elements(records)
        out: list[np.ndarray] = []
        torch = self._torch
        with torch.no_grad():
            for start in range(0, len(records), self.batch_size):
                chunk = records[start : start + self.batch_size]
                data = self._forward(chunk)
                x = self._node_features(data).detach().to("cpu", torch.float64).numpy()
                bounds = np.cumsum([0] + [r.natoms for r in chunk])
                out.extend(x[bounds[i] : bounds[i + 1]] for i in range(len(chunk)))
        return out

    def _readout_energy(self, records: Sequence[Record]) -> np.ndarray:
        """Total energies (eV) from running the removed readout layers on the extracted node features.

        A check that the features are the full model's last representation: these must equal the energies of
        sevenn's own SevenNetCalculator (which runs the whole model, forces included) to float32 precision.
        """
        torch = self._torch
        records = list(records)
        self.check_elements(records)
        with torch.no_grad():
            data = self._forward(records)
            for _, module in self._head:
                data = module(data)
            return data[self._KEY.PRED_TOTAL_ENERGY].detach().to("cpu", torch.float64).numpy()
