"""JMP checkpoint keys <-> atomsift GemNet-OC: round trips, EMA selection, the atom embedding, bad inputs.

Fake JMP checkpoints are written from random atomsift models with ``to_jmp_checkpoint``. The layout they
follow (key names, order, EMA order) was checked against JMP's own model and the released jmp-s.pt key list
(docs/jmp.md); these tests pin the mapping so that it cannot drift.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from atomsift.errors import ConfigError, DataError
from atomsift.models.backbones.gemnet_oc import jmp
from atomsift.models.backbones.gemnet_oc.jmp_format import _jmp_group
from atomsift.models.backbones.gemnet_oc.layers import ScaledSiLU
from atomsift.models.backbones.gemnet_oc.model import GemNetOC
from atomsift.models.backbones.gemnet_oc.presets import PRESETS
from atomsift.models.heads import mlp

ARCH_KEYS = [k for k in PRESETS["tiny"] if not k.startswith(("cutoff", "max_neighbors", "enforce", "use_pbc"))]

# hyper_parameters["backbone"] of the released jmp-s.pt (as printed by JMP's author in nimashoghi/jmp-backbone,
# notebooks/checkpoint_loading.ipynb), minus the cluster path of its scale file
RELEASED_JMP_S_BACKBONE = {
    "num_targets": 1,
    "num_spherical": 7,
    "num_radial": 128,
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
    "num_before_skip": 2,
    "num_after_skip": 2,
    "num_concat": 1,
    "num_atom": 3,
    "num_output_afteratom": 3,
    "num_atom_emb_layers": 2,
    "num_global_out_layers": 2,
    "regress_forces": True,
    "regress_energy": True,
    "direct_forces": True,
    "use_pbc": True,
    "scale_backprop_forces": False,
    "rbf": {"name": "gaussian"},
    "rbf_spherical": None,
    "envelope": {"name": "polynomial", "exponent": 5},
    "cbf": {"name": "spherical_harmonics"},
    "sbf": {"name": "legendre_outer"},
    "extensive": True,
    "forces_coupled": False,
    "activation": "scaled_silu",
    "quad_interaction": True,
    "atom_edge_interaction": True,
    "edge_atom_interaction": True,
    "atom_interaction": True,
    "scale_basis": False,
    "qint_tags": [1, 2],
    "num_elements": 120,
    "otf_graph": False,
    "ln": False,
    "dropout": None,
    "scale_file": "base.pt",
    "replace_scale_factors_with_ln": False,
    "absolute_rbf_cutoff": 12.0,
    "learnable_rbf": False,
    "learnable_rbf_stds": False,
    "unique_basis_per_layer": False,
    "old_gaussian_implementation": False,
    "edge_dropout": 0.1,
}


def _randomise(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state_dict of a copy of `model` with random parameters and fitted (non-zero) scale factors."""
    g = torch.Generator().manual_seed(seed)
    copy = GemNetOC(**model.hparams())
    with torch.no_grad():
        for p in copy.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        for name, b in copy.named_buffers():
            if name.endswith("scale_factor"):
                b.fill_(float(torch.rand((), generator=g)) + 0.5)
    return {k: v.clone() for k, v in copy.state_dict().items()}


def _jmp_head(width: int, layers: int, seed: int) -> nn.Sequential:
    """A head as JMP builds it: Linear (bias) and scaled SiLU alternating, last Linear to 1 without bias."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(layers):
        last = i == layers - 1
        mods.append(nn.Linear(width, 1 if last else width, bias=not last))
        if not last:
            mods.append(ScaledSiLU())
    return nn.Sequential(*mods)


def _head_dict(model: nn.Module, seed: int, width: int) -> dict[str, torch.Tensor]:
    e, f = _jmp_head(model.node_dim, 3, seed), _jmp_head(width, 3, seed + 1)
    return {
        **{f"energy.{k}": v for k, v in e.state_dict().items()},
        **{f"forces.{k}": v for k, v in f.state_dict().items()},
    }


@pytest.fixture(scope="module")
def tiny() -> GemNetOC:
    return GemNetOC.from_preset("tiny")


@pytest.fixture(scope="module")
def weights(tiny) -> tuple[dict, dict]:
    """(raw, ema) random state_dicts of the tiny model."""
    return _randomise(tiny, 1), _randomise(tiny, 2)


def test_key_rules_map_both_ways(tiny):
    for key in tiny.state_dict():
        assert jmp.jmp_to_atomsift_key(jmp.atomsift_to_jmp_key(key)) == key
    examples = {
        "atom_emb.embeddings.weight": "embedding.atom_embedding.weight",
        "edge_emb.dense.linear.weight": "backbone.bases.edge_emb.dense.linear.weight",
        "radial_basis.rbf.offset": "backbone.bases.radial_basis.rbf.offset",
        "mlp_sbf_qint.weight": "backbone.bases.mlp_sbf_qint.weight",
        "out_mlp_E.0.linear.weight": "backbone.out_mlp_E.out_mlp.0.linear.weight",
        "out_mlp_F.1.dense_mlp.0.linear.weight": "backbone.out_mlp_F.out_mlp.1.dense_mlp.0.linear.weight",
        "int_blocks.0.atom_emb_layers.0.dense_mlp.0.linear.weight": "backbone.int_blocks.0.atom_emb_layers.0.dense_mlp.0.linear.weight",
        "out_blocks.1.scale_rbf_F.scale_factor": "backbone.out_blocks.1.scale_rbf_F.scale_factor",
    }
    for ours, theirs in examples.items():
        assert jmp.atomsift_to_jmp_key(ours) == theirs
        assert jmp.jmp_to_atomsift_key(theirs) == ours
    for dropped in (
        "backbone.bases.radial_basis.rbf.temps",
        "output.out_energy.0.0.weight",
        "task_steps._module_dict._typed_moduledict_oc20.value",
    ):
        assert jmp.jmp_to_atomsift_key(dropped) is None
    with pytest.raises(ConfigError, match="out_energy"):
        jmp.atomsift_to_jmp_key("out_energy.linear.weight")


def test_jmp_layout_order_and_gaussian_widths(tiny, weights):
    raw, _ = weights
    keys = list(jmp.to_jmp_state_dict(raw))
    state = jmp.to_jmp_state_dict(raw)
    assert keys[0] == jmp.EMBEDDING_KEY
    groups = [_jmp_group(k) for k in keys]
    assert groups == sorted(groups)
    bases = [k for k in keys if k.startswith("backbone.bases.")]
    assert bases[-1].startswith("backbone.bases.edge_emb.")
    for i, key in enumerate(keys):
        if key.endswith("rbf.offset"):
            n = state[key].numel()
            assert keys[i + 1] == key[: -len("offset")] + "temps"
            assert torch.equal(state[keys[i + 1]], torch.full((n,), 0.5 * (n - 1) ** 2))
    ema_keys = jmp.jmp_ema_parameter_keys(keys)
    assert ema_keys[0] == jmp.EMBEDDING_KEY
    assert not any(k.endswith(("scale_factor", "rbf.offset", "rbf.temps")) or ".seq_energy_pre." in k for k in ema_keys)
    params = {jmp.atomsift_to_jmp_key(k) for k, _ in tiny.named_parameters()}
    assert set(ema_keys) == params  # one EMA tensor per parameter, the seq_energy_pre aliases counted once


def test_round_trip_values_and_hparams(tiny, weights):
    raw, ema = weights
    ckpt = jmp.to_jmp_checkpoint(raw, tiny.hparams(), ema_state_dict=ema)
    params = {k for k, _ in tiny.named_parameters()}
    # JMP's EMA covers parameters only: buffers (scale factors, Gaussian centres) are the state_dict's
    ema_expected = {
        k: ema[k.replace(".seq_energy_pre.", ".layers.")]
        if k.replace(".seq_energy_pre.", ".layers.") in params
        else raw[k]
        for k in raw
    }
    for use_ema, expected in ((True, ema_expected), (False, raw)):
        w = jmp.read_jmp_checkpoint(ckpt, ema=use_ema)
        assert w.used_ema is use_ema
        assert set(w.backbone) == set(expected)
        assert all(torch.equal(w.backbone[k], expected[k]) for k in expected)
        assert {k: w.hparams[k] for k in ARCH_KEYS} == {k: tiny.hparams()[k] for k in ARCH_KEYS}
        assert w.unexpected == []
        rebuilt = GemNetOC(**w.hparams)
        rebuilt.load_state_dict(w.backbone, strict=True)
        loaded = rebuilt.state_dict()
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)  # incl. out_blocks.*.layers (aliased)


def test_embedding_is_mapped_and_required(tiny, weights):
    """Regression for the paper's pitfall: a JMP embedding must land in atomsift's atom_emb, never stay random."""
    raw, ema = weights
    ckpt = jmp.to_jmp_checkpoint(raw, tiny.hparams(), ema_state_dict=ema)
    backbone, _w, report = jmp.load_jmp_backbone(ckpt)
    assert report.clean and report.used_ema
    ema_embedding = ckpt["optimizer_states"][0]["ema"][0]
    assert torch.equal(backbone.atom_emb.embeddings.weight.detach(), ema_embedding)
    assert torch.equal(ema_embedding, ema["atom_emb.embeddings.weight"])
    del ckpt["state_dict"][jmp.EMBEDDING_KEY]
    with pytest.raises(DataError, match="atom embedding"):
        jmp.read_jmp_checkpoint(ckpt)


def test_ema_absent_wrong_length_or_shape(tiny, weights):
    raw, ema = weights
    plain = jmp.to_jmp_checkpoint(raw, tiny.hparams())
    w = jmp.read_jmp_checkpoint(plain, ema=True)
    assert not w.used_ema and any("no EMA" in n for n in w.notes)
    assert torch.equal(w.backbone["int_blocks.0.dense_ca.linear.weight"], raw["int_blocks.0.dense_ca.linear.weight"])

    ckpt = jmp.to_jmp_checkpoint(raw, tiny.hparams(), ema_state_dict=ema)
    short = dict(ckpt, optimizer_states=[{"ema": ckpt["optimizer_states"][0]["ema"][:-1]}])
    with pytest.raises(DataError, match="EMA tuple has"):
        jmp.read_jmp_checkpoint(short)
    assert not jmp.read_jmp_checkpoint(short, ema=False).used_ema
    tensors = list(ckpt["optimizer_states"][0]["ema"])
    tensors[0], tensors[1] = tensors[1], tensors[0]  # out of order: shapes no longer fit
    with pytest.raises(DataError, match="EMA tensor 0"):
        jmp.read_jmp_checkpoint(dict(ckpt, optimizer_states=[{"ema": tuple(tensors)}]))


def test_heads_round_trip_and_atomsift_form(tiny, weights):
    raw, _ = weights
    heads = {name: _head_dict(tiny, 10 + i, tiny.edge_dim) for i, name in enumerate(("oc20", "ani1x"))}
    ckpt = jmp.to_jmp_checkpoint(raw, tiny.hparams(), heads=heads)
    assert "output.out_forces.1.4.weight" in ckpt["state_dict"]
    assert list(ckpt["state_dict"])[-1] == "task_steps._module_dict._typed_moduledict_ani1x.value"
    w = jmp.read_jmp_checkpoint(ckpt)
    assert list(w.heads) == ["oc20", "ani1x"] and [t["name"] for t in w.tasks] == ["oc20", "ani1x"]
    for name in heads:
        assert all(torch.equal(w.heads[name][k], heads[name][k]) for k in heads[name])
    no_names = dict(ckpt, hyper_parameters={"backbone": ckpt["hyper_parameters"]["backbone"]})
    assert list(jmp.read_jmp_checkpoint(no_names).heads) == ["oc20", "ani1x"]  # from task_steps keys

    spec, state = jmp.atomsift_head_weights(w.heads["oc20"])
    assert spec["hidden"] == tiny.node_dim and spec["num_layers"] == 3 and spec["forces"] == "direct"
    ours = mlp(tiny.node_dim, spec["hidden"], 1, spec["num_layers"], bias=False)
    ours.load_state_dict({k[len("energy.") :]: v for k, v in state.items() if k.startswith("energy.")})
    theirs = _jmp_head(tiny.node_dim, 3, 10)
    x = torch.randn(7, tiny.node_dim)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_released_jmp_s_config_and_size_inference():
    hp, requires, notes = jmp.hparams_from_jmp(RELEASED_JMP_S_BACKBONE)
    arch = [k for k in PRESETS["S"] if not k.startswith(("cutoff", "max_neighbors", "enforce", "use_pbc"))]
    assert {k: hp[k] for k in arch} == {k: PRESETS["S"][k] for k in arch}
    assert hp["activation"] == "silu" and requires == {"absolute_rbf_cutoff": 12.0}
    assert hp["max_neighbors_aint"] == 1000 and hp["max_neighbors_qint"] == 8 and hp["max_neighbors_aeaint"] == 20
    assert any("edge dropout" in n for n in notes) and any("tag 2" in n for n in notes)
    assert not any("ignored" in n for n in notes)

    # no hyper_parameters: the architecture is read from the weights' shapes
    state = {
        jmp.EMBEDDING_KEY: torch.zeros(120, 256),
        "backbone.bases.edge_emb.dense.linear.weight": torch.zeros(512, 640),
        **{f"backbone.int_blocks.{i}.dense_ca.linear.weight": torch.zeros(512, 512) for i in range(4)},
    }
    w = jmp.read_jmp_checkpoint({"state_dict": state})
    assert w.hparams["num_blocks"] == 4 and w.hparams["emb_size_edge"] == 512
    assert any("JMP-S architecture assumed" in n for n in w.notes)
    with pytest.raises(ConfigError, match="contradicts"):
        jmp.read_jmp_checkpoint(
            {"state_dict": state, "hyper_parameters": {"backbone": RELEASED_JMP_S_BACKBONE}}, size="L"
        )
    state["backbone.bases.edge_emb.dense.linear.weight"] = torch.zeros(100, 640)
    with pytest.raises(ConfigError, match="size="):
        jmp.read_jmp_checkpoint({"state_dict": state})


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"activation": "silu"}, ConfigError, "activation"),
        ({"unique_basis_per_layer": True}, ConfigError, "unique_basis_per_layer"),
        ({"learnable_rbf_stds": True}, ConfigError, "learnable_rbf_stds"),
        ({"emb_size_edge": 48}, DataError, "edge_emb"),
        ({"num_blocks": 3}, DataError, "interaction blocks"),
    ],
)
def test_bad_configs(tiny, weights, change, error, match):
    raw, _ = weights
    ckpt = jmp.to_jmp_checkpoint(raw, tiny.hparams())
    ckpt["hyper_parameters"]["backbone"].update(change)
    with pytest.raises(error, match=match):
        jmp.read_jmp_checkpoint(ckpt)


def test_not_a_jmp_checkpoint_and_foreign_keys(tiny, weights):
    for obj in ([1, 2], {"model": {}}, {"state_dict": {"module.x": torch.zeros(1)}}):
        with pytest.raises(DataError, match="not a JMP checkpoint"):
            jmp.read_jmp_checkpoint(obj)
    raw, _ = weights
    ckpt = jmp.to_jmp_checkpoint(raw, tiny.hparams())
    temps = next(k for k in ckpt["state_dict"] if k.endswith("rbf.temps"))
    learned = dict(ckpt, state_dict={**ckpt["state_dict"], temps: ckpt["state_dict"][temps] * 1.5})
    with pytest.raises(ConfigError, match="learned Gaussian widths"):
        jmp.read_jmp_checkpoint(learned)
    extra = dict(ckpt, state_dict={**ckpt["state_dict"], "backbone.per_layer_bases.0.x": torch.zeros(1)})
    dropped = "backbone.int_blocks.1.dense_ca.linear.weight"
    extra["state_dict"].pop(dropped)
    _, _w, report = jmp.load_jmp_backbone(extra)
    assert report.unexpected_keys == ["backbone.per_layer_bases.0.x"]
    assert report.missing_keys == [jmp.jmp_to_atomsift_key(dropped)] and not report.clean


def test_shape_mismatch_names_the_jmp_key(tiny, weights):
    raw, _ = weights
    ckpt = jmp.to_jmp_checkpoint(raw, tiny.hparams())
    key = "backbone.int_blocks.0.trip_interaction.dense_ba.linear.weight"
    ckpt["state_dict"][key] = torch.zeros(3, 3)
    with pytest.raises(DataError, match=re.escape(key)):
        jmp.load_jmp_backbone(ckpt)


def test_graph_settings_and_absolute_rbf_cutoff_note(tiny, weights):
    raw, _ = weights
    ckpt = jmp.to_jmp_checkpoint(raw, {**tiny.hparams(), "cutoff": 12.0})
    w = jmp.read_jmp_checkpoint(ckpt, cutoff=8.0, max_neighbors=30, qint_tags=[0, 1, 2])
    assert w.hparams["cutoff_aint"] == 8.0 and w.hparams["qint_tags"] == [0, 1, 2]
    # JMP divides distances by a fixed 12 A in every radial basis, whatever the graph cutoff
    assert w.requires == {"absolute_rbf_cutoff": 12.0} and w.hparams["absolute_rbf_cutoff"] == 12.0


def test_file_round_trip_loads_without_pickled_objects(tiny, weights, tmp_path):
    """A JMP-layout file written here loads with weights_only=True; with the lead's dispatcher, end to end."""
    raw, ema = weights
    path = tmp_path / "fake-jmp.pt"
    torch.save(jmp.to_jmp_checkpoint(raw, tiny.hparams(), ema_state_dict=ema), path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    w = jmp.read_jmp_checkpoint(obj)
    assert w.used_ema and torch.equal(w.backbone["atom_emb.embeddings.weight"], ema["atom_emb.embeddings.weight"])
    pytest.importorskip("atomsift.models.backbones.gemnet_oc.checkpoints")
    from atomsift.models.checkpoint import load_checkpoint

    model = load_checkpoint(path, strict=False)
    state = model.backbone.state_dict()
    assert torch.equal(state["atom_emb.embeddings.weight"], ema["atom_emb.embeddings.weight"])
    assert model.load_report.used_ema
