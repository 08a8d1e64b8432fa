"""CSI feature extractors: registry, aggregation, and the sevenn / chgnet / soap extractors on bundled data.

Each model is loaded once per module. The layer checks: running the readout layers that the extractor cut
off on the extracted features reproduces the full model's energy (SevenNetCalculator for SevenNet-0,
CHGNet.predict_structure for CHGNet), so the features are the readout's whole input.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from atomsift.csi import extract
from atomsift.csi.extract import EXTRACTORS, FeatureExtractor, aggregate, get_extractor, register_extractor
from atomsift.data import Record, open_dataset
from atomsift.errors import ConfigError, DataError

# ---- data ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ethanol() -> list[Record]:
    ds = open_dataset("bundled:ethanol")
    return [ds[i] for i in (0, 250, 500, 999)]


@pytest.fixture(scope="module")
def oxides() -> list[Record]:
    ds = open_dataset("bundled:oxides")
    return [ds[i] for i in (0, 1, 2, 100)]


def rotation(seed: int = 0) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def moved(rec: Record, seed: int = 0) -> Record:
    """`rec` rotated rigidly (cell too) and translated."""
    rot = rotation(seed)
    shift = np.array([3.1, -7.4, 12.9])
    return replace(
        rec,
        positions=rec.positions @ rot.T + shift,
        cell=None if rec.cell is None else np.asarray(rec.cell) @ rot.T,
        id=rec.id + "/moved",
    )


def permuted(rec: Record, perm: np.ndarray) -> Record:
    return replace(rec, numbers=rec.numbers[perm], positions=rec.positions[perm], id=rec.id + "/perm")


def with_element(rec: Record, z: int, record_id: str) -> Record:
    numbers = rec.numbers.copy()
    numbers[-1] = z
    return replace(rec, numbers=numbers, id=record_id)


def assert_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    """Equal up to `rel` of the features' scale (float32 models)."""
    scale = max(float(np.abs(expected).max()), 1e-12)
    np.testing.assert_allclose(actual, expected, rtol=rel, atol=rel * scale)


# ---- models (loaded once) -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sevenn_ex() -> FeatureExtractor:
    pytest.importorskip("sevenn", reason="sevenn not installed (pip install atomsift[sevenn])")
    return get_extractor("sevenn")


@pytest.fixture(scope="module")
def chgnet_ex() -> FeatureExtractor:
    pytest.importorskip("chgnet", reason="chgnet not installed (pip install atomsift[chgnet])")
    return get_extractor("chgnet")


@pytest.fixture(scope="module")
def soap_ex() -> FeatureExtractor:
    pytest.importorskip("dscribe", reason="dscribe not installed (pip install atomsift[soap])")
    return get_extractor("soap")


SPECIES = ["H", "C", "O", "Ti", "V", "Ru", "Sn", "Ir"]  # ethanol + bundled oxides


@pytest.fixture(scope="module")
def soap_full_ex() -> FeatureExtractor:
    pytest.importorskip("dscribe", reason="dscribe not installed (pip install atomsift[soap])")
    return get_extractor("soap-full", species=SPECIES)


EXPECTED_DIM = {"sevenn": 128, "chgnet": 64, "soap": 6 * 7 // 2 * 5, "soap-full": 8 * 6 * (8 * 6 + 1) // 2 * 5}


@pytest.fixture(scope="module", params=["sevenn", "chgnet", "soap", "soap-full"])
def extractor(request) -> FeatureExtractor:
    fixture = {"sevenn": "sevenn_ex", "chgnet": "chgnet_ex", "soap": "soap_ex", "soap-full": "soap_full_ex"}
    return request.getfixturevalue(fixture[request.param])


def spec_of(ex: FeatureExtractor) -> str:
    return {"sevenn-0": "sevenn", "chgnet-0.3.0": "chgnet", "soap": "soap", "soap-full": "soap-full"}[ex.name]


# ---- every extractor -------------------------------------------------------------------------------------------


def test_shapes_and_dims(extractor, ethanol, oxides):
    feats = extractor.features(ethanol + oxides)
    assert extractor.dim == EXPECTED_DIM[spec_of(extractor)]
    assert len(feats) == len(ethanol) + len(oxides)
    for rec, f in zip(ethanol + oxides, feats):
        assert f.shape == (rec.natoms, extractor.dim)
        assert f.dtype == np.float64
        assert np.all(np.isfinite(f))
    assert not np.allclose(feats[0][0], feats[-1][0])
    assert len(extractor.weights_hash()) == 64
    assert extractor.weights_hash() == extractor.weights_hash()
    assert extractor.layer and extractor.name
    prov = extractor.provenance()
    assert prov["dim"] == extractor.dim and prov["weights_hash"] == extractor.weights_hash()


def test_deterministic(extractor, ethanol, oxides):
    recs = [ethanol[0], oxides[0]]
    a = extractor.features(recs)
    b = extractor.features(recs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("which", ["molecule", "crystal"])
def test_rigid_motion_invariance(extractor, ethanol, oxides, which):
    rec = ethanol[1] if which == "molecule" else oxides[1]
    ref, got = extractor.features([rec, moved(rec, seed=3)])
    assert_close(got, ref)


def test_permutation_equivariance(extractor, ethanol, oxides):
    for rec in (ethanol[2], oxides[2]):
        perm = np.random.default_rng(1).permutation(rec.natoms)
        (ref,) = extractor.features([rec])
        (got,) = extractor.features([permuted(rec, perm)])
        assert_close(got, ref[perm])


def test_batch_equals_one_at_a_time(extractor, ethanol, oxides):
    recs = [ethanol[0], oxides[0], ethanol[3], oxides[3], oxides[1]]
    together = extractor.features(recs)
    for rec, f in zip(recs, together):
        (alone,) = extractor.features([rec])
        assert_close(f, alone, rel=1e-5)


UNKNOWN = {"sevenn": (86, "Rn"), "chgnet": (118, "Og"), "soap": None, "soap-full": (7, "N")}


def test_unknown_element_is_a_data_error(extractor, ethanol):
    spec = spec_of(extractor)
    z, symbol = UNKNOWN[spec] or (118, "Og")
    if spec == "soap":  # the default accepts every element; restrict it to check the error
        pytest.importorskip("dscribe")
        extractor = get_extractor("soap", species=["H", "C", "O"])
        z, symbol = 7, "N"
    bad = with_element(ethanol[0], z, "ethanol/odd-one")
    with pytest.raises(DataError) as err:
        extractor.features([ethanol[1], bad])
    message = str(err.value)
    assert symbol in message and "ethanol/odd-one" in message and extractor.name in message


def test_isolated_atom_and_pbc_without_cell(extractor):
    atom = Record(numbers=np.array([8]), positions=np.zeros((1, 3)), id="lone-O")
    (f,) = extractor.features([atom])
    assert f.shape == (1, extractor.dim) and np.all(np.isfinite(f))
    broken = Record(numbers=np.array([8, 1]), positions=np.eye(3)[:2], pbc=np.ones(3, bool), id="no-cell")
    with pytest.raises(DataError, match="no-cell"):
        extractor.features([broken])


# ---- which layer: the cut-off readout reproduces the model's own energy --------------------------------------------


def test_sevenn_features_feed_the_readout(sevenn_ex, ethanol, oxides):
    from sevenn.calculator import SevenNetCalculator

    recs = ethanol[:2] + oxides[:2]
    energies = sevenn_ex._readout_energy(recs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator(str(sevenn_ex.weights_path), device="cpu")
    for rec, e in zip(recs, energies):
        atoms = rec.to_atoms()
        atoms.calc = calc
        assert e == pytest.approx(atoms.get_potential_energy(), rel=1e-5, abs=1e-4)
    assert sevenn_ex.layer.startswith("4_equivariant_gate")
    assert sevenn_ex.supported_numbers is not None and len(sevenn_ex.supported_numbers) == 89


def test_chgnet_features_feed_the_readout(chgnet_ex, ethanol, oxides):
    from pymatgen.core import Lattice, Structure

    recs = ethanol[:2] + oxides[:2]
    by_hand, own = chgnet_ex._readout_energy(recs)
    np.testing.assert_allclose(by_hand, own, rtol=1e-5)
    for rec, e in zip(oxides[:2], by_hand[2:]):  # CHGNet's public route, independent of the hook
        s = Structure(Lattice(rec.cell), rec.numbers.tolist(), rec.positions, coords_are_cartesian=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = chgnet_ex._model.predict_structure(s, task="e")
        assert e == pytest.approx(float(pred["e"]), rel=1e-5)


def test_chgnet_padding_keeps_images_beyond_the_cutoff(ethanol, oxides):
    pytest.importorskip("chgnet")
    from atomsift.csi.extractors.chgnet import periodic_cell

    mol = ethanol[0]
    cell, pos = periodic_cell(mol, cutoff=6.0)
    extent = mol.positions.max(0) - mol.positions.min(0)
    np.testing.assert_allclose(np.diag(cell), extent + 8.0)
    assert np.all(pos >= 0) and np.all(pos <= np.diag(cell))
    slab = replace(oxides[0], pbc=np.array([True, True, False]))
    cell, pos = periodic_cell(slab, cutoff=6.0)
    normal = np.cross(cell[0], cell[1])
    normal /= np.linalg.norm(normal)
    proj = slab.positions @ normal
    assert abs(cell[2] @ normal) >= proj.max() - proj.min() + 6.0 - 1e-9
    np.testing.assert_array_equal(cell[:2], np.asarray(slab.cell)[:2])


# ---- SOAP ---------------------------------------------------------------------------------------------------------


def test_soap_is_element_agnostic_and_species_free(soap_ex, ethanol):
    restricted = get_extractor("soap", species=["C", "H", "O"])
    a, b = soap_ex.features(ethanol[:1])[0], restricted.features(ethanol[:1])[0]
    np.testing.assert_array_equal(a, b)
    assert restricted.weights_hash() == soap_ex.weights_hash()
    all_carbon = replace(ethanol[0], numbers=np.full(ethanol[0].natoms, 6))
    np.testing.assert_allclose(soap_ex.features([all_carbon])[0], a, rtol=1e-12)
    weighted = get_extractor("soap", species=["H", "C", "O"], species_weighting={"H": 1.0, "C": 6.0, "O": 8.0})
    assert weighted.dim == soap_ex.dim and weighted.weights_hash() != soap_ex.weights_hash()
    assert not np.allclose(weighted.features(ethanol[:1])[0], a)


def test_soap_full_settings(soap_full_ex):
    with pytest.raises(ConfigError, match="species"):
        get_extractor("soap-full")
    other = get_extractor("soap-full", species=[1, 6, 8])
    assert other.dim == 3 * 6 * (3 * 6 + 1) // 2 * 5 == 855
    assert other.weights_hash() != soap_full_ex.weights_hash()
    assert get_extractor("soap-full", species=["O", "C", "H", "C"]).weights_hash() == other.weights_hash()
    assert get_extractor("soap_full", species="H, C,O").weights_hash() == other.weights_hash()
    assert get_extractor("soap-full", species=[1, 6, 8], r_cut=4.0).weights_hash() != other.weights_hash()
    with pytest.raises(ConfigError, match="Xx"):
        get_extractor("soap-full", species=["H", "Xx"])
    with pytest.warns(UserWarning, match="CPU"):
        get_extractor("soap-full", species=[1, 6, 8], device="cuda")


# ---- registry -----------------------------------------------------------------------------------------------------


class CountAtoms(FeatureExtractor):
    """A fake extractor: one feature per atom, its atomic number times `scale`."""

    name = "count-atoms"
    dim = 1
    layer = "atomic number"

    def __init__(self, path: str | None = None, *, scale: float = 1.0) -> None:
        self.path, self.scale = path, scale
        self.supported_numbers = frozenset(range(1, 10))

    def weights_hash(self) -> str:
        return extract.sha256_settings({"scale": self.scale, "path": self.path})

    def features(self, records):
        self.check_elements(records)
        return [self.scale * r.numbers[:, None].astype(np.float64) for r in records]


def test_register_extractor(monkeypatch, ethanol):
    monkeypatch.setattr(extract, "EXTRACTORS", dict(EXTRACTORS))
    register_extractor("count-atoms", CountAtoms)
    ex = get_extractor("count-atoms", scale=2.0)
    np.testing.assert_array_equal(ex.features(ethanol[:1])[0][:, 0], 2.0 * ethanol[0].numbers)
    with pytest.raises(ConfigError, match="options are: path, scale"):
        get_extractor("count-atoms", nonsense=1)
    with pytest.raises(ConfigError, match="already registered"):
        register_extractor("count-atoms", lambda **kw: CountAtoms(**kw))
    register_extractor("count-atoms", lambda **kw: CountAtoms(scale=3.0), replace=True)
    assert get_extractor("count-atoms").scale == 3.0
    with pytest.raises(ConfigError):
        register_extractor("bad:name", CountAtoms)
    # "NAME:ARG" passes ARG to the factory registered as NAME
    register_extractor("count-file", lambda path, **kw: CountAtoms(path, **kw))
    ex = get_extractor("count-file:/models/gemnet.ckpt", scale=0.5)
    assert ex.path == "/models/gemnet.ckpt" and ex.scale == 0.5
    with pytest.raises(DataError, match="ethanol"):
        ex.features([with_element(ethanol[0], 10, "ethanol/neon")])


def test_checkpoint_extractor_missing_file_is_a_data_error(tmp_path):
    assert "checkpoint" in EXTRACTORS
    with pytest.raises(DataError, match="not found"):
        get_extractor(f"checkpoint:{tmp_path / 'absent.pt'}")
    with pytest.raises(ConfigError, match="options are"):
        get_extractor(f"checkpoint:{tmp_path / 'absent.pt'}", layer_count=3)


def test_unknown_extractor_and_options():
    with pytest.raises(ConfigError) as err:
        get_extractor("equiformer")
    assert all(name in str(err.value) for name in ("sevenn", "chgnet", "soap", "soap-full"))
    with pytest.raises(ConfigError, match="species"):
        get_extractor("sevenn", species=["H"])
    with pytest.raises(ConfigError):
        get_extractor("")


@pytest.mark.parametrize(
    ("spec", "modules", "extra"),
    [
        ("sevenn", ("sevenn",), "sevenn"),
        ("chgnet", ("chgnet", "chgnet.model"), "chgnet"),
        ("soap", ("dscribe", "dscribe.descriptors"), "soap"),
    ],
)
def test_missing_package_says_how_to_install(monkeypatch, spec, modules, extra):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(ConfigError) as err:
        get_extractor(spec, species=["H"]) if spec == "soap" else get_extractor(spec)
    assert f"pip install atomsift[{extra}]" in str(err.value)


def test_importing_extract_is_cheap():
    code = (
        "import sys, atomsift.csi.extract\n"
        "names = ('sevenn', 'chgnet', 'dscribe', 'pymatgen', 'e3nn', 'torch_geometric')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---- aggregation --------------------------------------------------------------------------------------------------


def test_aggregate():
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.array([[10.0, -1.0]])
    np.testing.assert_array_equal(aggregate([a, b], "flat"), np.vstack([a, b]))
    np.testing.assert_array_equal(aggregate([a, b], "mean"), [[2.0, 3.0], [10.0, -1.0]])
    np.testing.assert_array_equal(aggregate([a, b], "sum"), [[6.0, 9.0], [10.0, -1.0]])
    np.testing.assert_array_equal(aggregate([a, b], "max"), [[4.0, 5.0], [10.0, -1.0]])
    assert aggregate([a, b], "flat").dtype == np.float64
    assert aggregate([a]).shape == (3, 2)  # flat is the default
    with pytest.raises(ConfigError) as err:
        aggregate([a], "median")
    assert all(h in str(err.value) for h in ("flat", "mean", "sum", "max"))
    with pytest.raises(DataError):
        aggregate([], "flat")
    with pytest.raises(DataError):
        aggregate([a, np.ones((2, 3))], "mean")
    with pytest.raises(DataError):
        aggregate([a, np.ones((0, 2))], "flat")


def test_sevenn_warns_once_about_a_huge_periodic_cell(sevenn_ex, oxides, monkeypatch):
    """A molecule in a 10,000 A periodic box took 4.5 GB in sevenn's neighbour search without a word (the
    threshold is lowered here so that the bundled oxides' cells trip it, rather than allocating gigabytes)."""
    from atomsift.csi.extractors import sevenn

    monkeypatch.setattr(sevenn, "HUGE_CELL_A", 1.0)
    monkeypatch.setattr(sevenn_ex, "_warned_huge_cell", False, raising=False)
    with pytest.warns(UserWarning, match=r"periodic cell vector of \d+ A.*pbc false") as caught:
        sevenn_ex._graph(oxides[0])
        sevenn_ex._graph(oxides[1])
    assert sum("periodic cell vector" in str(w.message) for w in caught) == 1


def test_extractor_speed_benchmark_runs():
    """benchmarks/extractor_speed.py (the figures of docs/extractors.md) still runs against the extractor API."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "extractor_speed.py"), "--extractors", "soap", "--data", "oxides"]
        + ["--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": f"{root / 'src'}:{root / 'benchmarks'}"},
    )
    assert proc.returncode == 0, proc.stderr
    row = [line for line in proc.stdout.splitlines() if line.startswith("soap ")]
    assert len(row) == 1 and row[0].split()[2:4] == ["295", "2934"], proc.stdout
