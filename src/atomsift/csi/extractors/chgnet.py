"""CHGNet 0.3.0 features: the 64 atom features after the last atom convolution and the readout norm.

CHGNet (weights `pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar` inside the `chgnet` wheel) has four atom
convolutions; after the last one a LayerNorm (`readout_norm`) and then, since `mlp_first` is set, the readout
MLP maps each atom's 64 features to a site energy. CHGNet's `return_atom_feas=True` returns the atom features
*before* the last convolution (the input of its magnetic-moment head), so it is not used; instead a forward
hook on `readout_norm` captures the final per-atom embedding, the input of the readout MLP. `_readout_energy`
runs the MLP on the captured features; the tests check it reproduces CHGNet's own energy.

CHGNet works on pymatgen Structures, which are periodic in all three directions:
  * a molecule (pbc all False) is centred in an orthorhombic box whose side along each axis is the
    molecule's extent + `atom_graph_cutoff` (6 A) + `VACUUM_PAD` (2 A), so no periodic image comes within
    the cutoff: the features are those of the isolated molecule;
  * a structure periodic in some directions only (a slab with pbc = T, T, F) keeps its cell, but each
    non-periodic lattice vector is stretched along itself until the spacing of the image planes exceeds the
    atoms' extent across them + cutoff + pad (Cartesian positions unchanged);
  * fully periodic structures are used as they are.
Atoms without any neighbour within 6 A (an isolated atom) are allowed: their feature is their embedding
passed through the layers without messages (CHGNet's converter is set to on_isolated_atoms="ignore").
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.csi.extract import FileWeightsExtractor, check_geometry, missing_package, offline_guards
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

MODEL_VERSION = "0.3.0"
WEIGHTS = "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"
"""CHGNet 0.3.0 weights, relative to the installed `chgnet` package."""
VACUUM_PAD = 2.0
"""A added to the cutoff when padding non-periodic directions."""


def periodic_cell(rec: Record, cutoff: float, pad: float = VACUUM_PAD) -> tuple[np.ndarray, np.ndarray]:
    """A fully periodic (cell, positions) equivalent to `rec` for a model with interaction `cutoff` (A).

    Returns:
        cell (3, 3) A as rows, positions (N, 3) A; see the module docstring for the padding rules.
    """
    pbc = np.asarray(rec.pbc, dtype=bool)
    pos = np.asarray(rec.positions, dtype=np.float64)
    if not pbc.any():
        lo, hi = pos.min(axis=0), pos.max(axis=0)
        side = (hi - lo) + cutoff + pad
        cell = np.diag(side)
        return cell, pos - (lo + hi) / 2 + side / 2
    cell = np.array(rec.cell, dtype=np.float64)
    for i in np.flatnonzero(~pbc):
        j, k = [a for a in range(3) if a != i]
        normal = np.cross(cell[j], cell[k])
        normal /= np.linalg.norm(normal)
        spacing = abs(float(np.dot(cell[i], normal)))
        proj = pos @ normal
        needed = float(proj.max() - proj.min()) + cutoff + pad
        if spacing < needed:
            cell[i] *= needed / spacing
    return cell, pos


class CHGNetExtractor(FileWeightsExtractor):
    """Per-atom 64-d features of the pretrained CHGNet 0.3.0.

    Args:
        device: torch device ("cpu", "cuda", ...).
        batch_size: structures per forward pass.
    """

    name = "chgnet-0.3.0"
    csi_units = "squared activations (dimensionless)"

    def __init__(self, *, device: str = "cpu", batch_size: int = 32) -> None:
        offline_guards()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                import chgnet
                import torch
                from chgnet.model import CHGNet
                from pymatgen.core import Lattice, Structure
        except ImportError as exc:
            raise missing_package(getattr(exc, "name", None) or "chgnet", "chgnet", "chgnet") from exc
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}", fix="use e.g. batch_size=32")
        self._torch = torch
        self._Lattice = Lattice
        self._Structure = Structure
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        path = Path(chgnet.__file__).parent / WEIGHTS
        if not path.is_file():
            raise ConfigError(
                f"CHGNet {MODEL_VERSION} weights not found: {path}",
                file=path,
                fix="reinstall chgnet (pip install --force-reinstall atomsift[chgnet])",
            )
        self.weights_path = path
        # CHGNet prints "CHGNet v0.3.0 initialized with ... parameters" on construction.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            model = CHGNet.from_file(str(path), mlp_out_bias=False, version=MODEL_VERSION)
        model.eval()
        self._model = model.to(self.device)
        self._converter = model.graph_converter
        self._converter.set_isolated_atom_response("ignore")
        self.cutoff = float(self._converter.atom_graph_cutoff)
        self.supported_numbers = frozenset(range(1, int(model.atom_embedding.embedding.num_embeddings) + 1))
        self.dim = int(model.model_args["atom_fea_dim"])
        if model.readout_norm is not None:
            target, where = model.readout_norm, f"atom_conv_layers[{len(model.atom_conv_layers) - 1}] + readout_norm"
        else:
            target, where = model.atom_conv_layers[-1], f"atom_conv_layers[{len(model.atom_conv_layers) - 1}]"
        self.layer = f"{where} ({self.dim} atom features, input of the readout MLP)"
        self._captured: list[Any] = []
        target.register_forward_hook(lambda _module, _inputs, output: self._captured.append(output.detach()))

    def _graph(self, rec: Record) -> Any:
        check_geometry(rec, self.name)
        cell, pos = periodic_cell(rec, self.cutoff)
        structure = self._Structure(self._Lattice(cell), [int(z) for z in rec.numbers], pos, coords_are_cartesian=True)
        try:
            return self._converter(structure, graph_id=rec.id).to(self.device)
        except Exception as exc:
            raise DataError(
                f"CHGNet could not build the graph of this structure: {exc}",
                record=rec.id,
                fix="check its cell and positions",
            ) from exc

    def _forward(self, records: Sequence[Record]) -> tuple[Any, dict[str, Any]]:
        graphs = [self._graph(r) for r in records]
        self._captured.clear()
        prediction = self._model(graphs, task="e")
        if len(self._captured) != 1:
            raise RuntimeError(f"expected one captured feature tensor, got {len(self._captured)}")
        feats = self._captured.pop()
        return feats, prediction

    def features(self, records: Sequence[Record]) -> list[np.ndarray]:
        records = list(records)
        self.check_elements(records)
        torch = self._torch
        out: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(records), self.batch_size):
                chunk = records[start : start + self.batch_size]
                feats, _ = self._forward(chunk)
                x = feats.to("cpu", torch.float64).numpy()
                bounds = np.cumsum([0] + [r.natoms for r in chunk])
                out.extend(x[bounds[i] : bounds[i + 1]] for i in range(len(chunk)))
        return out

    def _readout_energy(self, records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
        """(energy from the readout MLP on the captured features, CHGNet's own energy), both eV/atom.

        The first is mean over atoms of mlp(features) + the composition reference, i.e. CHGNet's readout done
        by hand; equality with the second shows the features are the readout's whole input.
        """
        torch = self._torch
        records = list(records)
        self.check_elements(records)
        with torch.no_grad():
            graphs = [self._graph(r) for r in records]
            self._captured.clear()
            prediction = self._model(graphs, task="e")
            feats = self._captured.pop()
            site = self._model.mlp(feats).view(-1)
            owners = torch.repeat_interleave(torch.tensor([r.natoms for r in records], device=site.device))
            total = torch.zeros(len(records), dtype=site.dtype, device=site.device).index_add_(0, owners, site)
            counts = torch.tensor([r.natoms for r in records], dtype=site.dtype, device=site.device)
            energy = total / counts + self._model.composition_model(graphs)
            return energy.to("cpu", torch.float64).numpy(), prediction["e"].to("cpu", torch.float64).numpy()
