"""Training parts checked against hand computations: mixtures, linear references, the loss, one backbone pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomsift.data import Record, open_dataset
from atomsift.graph import collate
from atomsift.models import AtomsModel, build_backbone
from atomsift.train.data import BudgetBatchSampler, Task, TrainSet, mixture_counts, temperature_shares
from atomsift.train.losses import TaskInfo, structure_losses
from atomsift.train.normalize import fit_normalizer

PAPER_SIZES = {"oc20": 100e6, "oc22": 8e6, "ani1x": 2e6, "t1x": 10e6}  # JMP's full-release sizes (the paper)


def test_balanced_and_temperature_counts():
    sizes = {"a": 10, "b": 1000, "c": 55}
    assert mixture_counts(sizes, 10, "balanced") == {"a": 4, "b": 3, "c": 3}  # remainder to the first
    assert sum(mixture_counts(sizes, 1001, "balanced").values()) == 1001
    n = 1_000_000
    counts = mixture_counts(sizes, n, "temperature", temperature=2.0, nominal=PAPER_SIZES | sizes)
    shares = temperature_shares(sizes, 2.0)
    for k in sizes:
        assert abs(counts[k] - shares[k] * n) <= 0.01 * shares[k] * n
    assert sum(counts.values()) == n
    paper = temperature_shares(PAPER_SIZES, 2.0)  # the paper's Mixed(Temp): 0.575 / 0.163 / 0.081 / 0.182
    assert [round(paper[k], 3) for k in ("oc20", "oc22", "ani1x", "t1x")] == [0.575, 0.163, 0.081, 0.182]
    assert mixture_counts({"x": 5}, 7, "single") == {"x": 7}


def test_sampler_covers_each_structure_once_per_epoch_and_splits_ranks():
    ds = open_dataset("bundled:oxides")
    tasks = [Task("ox", ds, np.arange(23), np.arange(23, 26), None)]
    one = BudgetBatchSampler(TrainSet(tasks), 4, seed=1)
    ranks = [BudgetBatchSampler(TrainSet(tasks), 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        single = [[i.position for i in b] for b in one]
        assert sorted(p for b in single for p in b) == list(range(23))
        split = [list(zip(*(iter(r) for r in ranks)))]  # step by step, both ranks
        for step, (a, b) in enumerate(split[0]):
            assert sorted(i.position for i in (*a, *b) if i.weight > 0) == sorted(single[step])
            assert {i.step_size for i in (*a, *b)} == {len(single[step])}
    assert [i.position for i in next(iter(one))] != [
        i.position for i in next(iter(BudgetBatchSampler(TrainSet(tasks), 4, 2)))
    ]


def test_linear_reference_recovers_per_element_energies():
    rng = np.random.default_rng(0)
    ref = {1: -13.6, 6: -1029.4, 8: -2041.8}
    records = []
    for i in range(40):
        numbers = rng.choice([1, 6, 8], size=rng.integers(2, 12))
        energy = sum(ref[int(z)] for z in numbers)
        records.append(
            Record(
                numbers=numbers,
                positions=rng.normal(size=(len(numbers), 3)) * 3,
                id=str(i),
                energy=energy + 0.01 * rng.normal(),
                forces=rng.normal(size=(len(numbers), 3)),
            )
        )
    norm = fit_normalizer(records, num_elements=10)
    for z, value in ref.items():
        assert norm.atom_ref[z] == pytest.approx(value, abs=5e-3)
    assert norm.atom_ref[7] == 0.0 and norm.elements == [1, 6, 8]
    assert norm.scale == pytest.approx(0.01, rel=0.5)  # the residual is the noise
    forces = np.concatenate([r.forces.ravel() for r in records])
    assert norm.force_scale == pytest.approx(forces.std(), rel=1e-12)


def test_loss_equals_a_hand_computation():
    rng = np.random.default_rng(1)
    recs = [
        Record(
            numbers=np.array([6, 1, 1]),
            positions=rng.normal(size=(3, 3)),
            id="a",
            energy=-3.0,
            forces=rng.normal(size=(3, 3)),
        ),
        Record(
            numbers=np.array([8, 1]),
            positions=rng.normal(size=(2, 3)),
            id="b",
            energy=2.5,
            forces=rng.normal(size=(2, 3)),
        ),
    ]
    batch = collate(recs, dtype=torch.float64)
    pred_e = torch.tensor([-2.0, 2.0], dtype=torch.float64)
    pred_f = torch.as_tensor(rng.normal(size=(5, 3)))
    task = TaskInfo("t", "t", energy_weight=1.0, force_weight=10.0)
    got = structure_losses({"energy": pred_e, "forces": pred_f}, batch, task, torch.tensor(2.0), torch.tensor(0.5))
    ref_f = np.concatenate([r.forces for r in recs])
    norms = np.linalg.norm(pred_f.numpy() - ref_f, axis=1)
    expected = [abs(-2.0 + 3.0) / 2.0 + 10 * norms[:3].mean() / 0.5, abs(2.0 - 2.5) / 2.0 + 10 * norms[3:].mean() / 0.5]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_mixed_batch_runs_the_backbone_once():
    torch.manual_seed(0)
    model = AtomsModel(
        build_backbone("painn", hidden=8, num_layers=1),
        {"m": {"kind": "energy", "forces": "gradient"}, "p": {"kind": "energy", "forces": "direct"}},
    )
    model = model.double()
    eth, ox = open_dataset("bundled:ethanol"), open_dataset("bundled:oxides")
    batch = collate([eth[0], ox[0], eth[1]], dtype=torch.float64, dataset=[0, 1, 0], dataset_names=["m", "p"])
    calls = []
    model.backbone.register_forward_hook(lambda *args: calls.append(1))
    outs = model.forward_heads(batch, {"m": batch.dataset == 0, "p": batch.dataset == 1}, create_graph=False)
    assert len(calls) == 1
    for name in ("m", "p"):
        alone = model(batch, head=name, create_graph=False)
        torch.testing.assert_close(outs[name]["energy"], alone["energy"])
    # gradient forces of head m come from its own structures only: atoms of the oxide get none
    atoms_ox = batch.batch == 1
    assert outs["m"]["forces"][atoms_ox].abs().max() == 0
    torch.testing.assert_close(outs["m"]["forces"][~atoms_ox], model(batch, head="m")["forces"][~atoms_ox])


def test_a_rank_without_structures_in_the_last_step_gets_a_zero_weight_stand_in():
    ds = open_dataset("bundled:oxides")
    train = TrainSet([Task("ox", ds, np.arange(9), np.arange(9, 12), None)])
    ranks = [list(BudgetBatchSampler(train, 4, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2  # the same number of steps: nobody waits
    last = [ranks[0][-1], ranks[1][-1]]
    assert [len(b) for b in last] == [1, 1] and [b[0].weight for b in last] == [1.0, 0.0]
    assert {i.step_size for b in last for i in b} == {1}  # the step's loss divides by its one real structure
    real = [i.position for r in ranks for b in r for i in b if i.weight > 0]
    assert sorted(real) == list(range(9))


def test_a_target_under_another_key_is_named_with_the_file_and_the_option_to_read_it(tmp_path):
    """Data without the target's label is named with its file and the reader's hint as the fix."""
    import ase.io
    from _train_helpers import pretrain_config

    from atomsift.data import open_dataset
    from atomsift.errors import DataError
    from atomsift.train.pretrain import run_pretraining

    frames = []
    for rec in [open_dataset("bundled:acac")[i] for i in range(30)]:
        atoms = rec.to_atoms()
        atoms.calc = None
        atoms.info["dft_energy"] = rec.energy
        frames.append(atoms)
    path = tmp_path / "custom.extxyz"
    ase.io.write(path, frames, format="extxyz")
    cfg = pretrain_config(upstream={"m": {"path": str(path), "val_size": 5}}, mixture="single", n_samples=20, epochs=1)
    # found when the run is planned (its dry run included), before any folder is written
    with pytest.raises(DataError, match="upstream 'm' has no energies") as exc:
        run_pretraining(cfg, tmp_path / "run", progress=False)
    assert exc.value.file == str(path) and not (tmp_path / "run").exists()
    assert exc.value.fix.startswith(
        "no 'energy' in the first frame; it has dft_energy: read it with the reader option energy_key=dft_energy"
    )


def test_merged_metrics_keep_lightnings_sorted_column_order_across_attempts(tmp_path):
    """A resumed run's metrics.csv had its columns in the order the attempts first logged them."""
    import csv

    from atomsift.train.runner import merge_metrics

    first = tmp_path / "logs" / "attempt_0"
    second = tmp_path / "logs" / "attempt_1"
    first.mkdir(parents=True)
    second.mkdir()
    (first / "metrics.csv").write_text("epoch,step,train/loss_step\n0,9,0.5\n0,19,0.4\n")
    (second / "metrics.csv").write_text("epoch,step,val/loss,train/loss_step,lr\n0,19,,0.41,\n0,29,0.3,,1e-3\n")
    with open(merge_metrics(tmp_path), newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["epoch", "lr", "step", "train/loss_step", "val/loss"]
    assert [(r["step"], r["train/loss_step"], r["val/loss"], r["lr"]) for r in rows] == [
        ("9", "0.5", "", ""),
        ("19", "0.41", "", ""),  # the later attempt's row for the same step and metrics replaces the earlier one
        ("29", "", "0.3", "1e-3"),
    ]


def test_labels_that_are_not_numbers_count_as_missing_and_are_said():
    """A NaN target (a QMOF band gap, a MatBench value) passed the readers; the normaliser's mean became NaN and
    the NaN-loss error named the first batch's structures, none of which held it. A NaN now marks a missing
    label everywhere (normaliser, batches, metrics), as None does, and the normaliser says how many."""
    ds = open_dataset("bundled:bench-qm9")
    records = [ds[i] for i in range(4)]
    records[2].targets["U0"] = float("nan")
    with pytest.warns(
        UserWarning, match=rf"1 training structure\(s\) of 'qm9' .* NaN or inf \(first: {records[2].id}\)"
    ):
        norm = fit_normalizer(records, target="U0", linear_reference=False, forces=False, source="qm9")
    finite = [r.targets["U0"] for k, r in enumerate(records) if k != 2]
    assert norm.shift == pytest.approx(np.mean(finite), rel=1e-12)
    batch = collate(records, targets=["U0"])
    assert batch.target_masks["U0"].tolist() == [True, True, False, True]
    assert torch.isfinite(batch.targets["U0"]).all()


def test_a_several_headed_model_says_which_head_scored():
    """evaluate / predict on a pretrained mixture scored its first head silently (another dataset's energy
    reference: errors off by 1e4)."""
    from types import SimpleNamespace

    from atomsift.train.evaluate import head_choice

    mixture = SimpleNamespace(head_specs={"mols": None, "acac": None}, default_head="mols")
    assert "2 heads (mols, acac); this used 'mols'" in head_choice(mixture, None)
    assert head_choice(mixture, "acac") == ""
    assert head_choice(SimpleNamespace(head_specs={"energy": None}, default_head="energy"), None) == ""
