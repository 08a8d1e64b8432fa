"""The shared command vocabulary: value parsing, dotted overrides, YAML + flags + overrides, output rules."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from atomsift.data.spec import DatasetSpec, parse_dataset_arg
from atomsift.errors import ConfigError
from atomsift.settings import (
    check_output_dir,
    check_output_file,
    parse_value,
    removed_if_left_empty,
    resolve_settings,
    validate,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("1e-4", 1e-4),
        ("1.5e3", 1500.0),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ("a.h5", "a.h5"),
        ("bundled:acac", "bundled:acac"),
        ("0.9", 0.9),
        ("{a: 1}", {"a": 1}),
        ("", ""),
    ],
)
def test_parse_value_is_a_yaml_scalar(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = "x"
    size: int = 1


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = 1e-3
    seed: int = 0
    data: Inner = Inner()


def test_file_then_flags_then_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.1\nseed: 5\ndata: {path: a.xyz, size: 2}\n")
    out = resolve_settings(Outer, cfg, flags={"seed": 7, "lr": None}, overrides=["data.path=b.xyz", "lr=1e-4"])
    assert out == Outer(lr=1e-4, seed=7, data=Inner(path="b.xyz", size=2))


def test_unknown_keys_and_bad_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.sise"):
        resolve_settings(Outer, None, overrides=["data.sise=3"])
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        resolve_settings(Outer, None, overrides=["lr"])
    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 0.1\n")
    with pytest.raises(ConfigError, match="goes inside 'lr'"):
        resolve_settings(Outer, flat, overrides=["lr.x=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_settings(Outer, bad)
    with pytest.raises(ConfigError, match="folder"):
        resolve_settings(Outer, tmp_path)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        resolve_settings(Outer, lst)


def test_true_false_for_a_number_and_a_key_given_twice_are_refused(tmp_path):
    """pydantic reads true as 1 for an int (n_samples=true drew one structure); YAML keeps the last of two
    equal keys: both were accepted without a word."""

    class Numbers(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int = 1
        share: float | None = None
        count: int | Literal["rest"] = "rest"
        flag: bool = False
        per: dict[str, Inner] = {}
        seeds: list[int] = []

    with pytest.raises(ConfigError, match=r"n \(command line: n=true\): a number, not true/false"):
        resolve_settings(Numbers, None, overrides=["n=true"])
    for bad in ("share=false", "count=true", "per.a.size=true", "seeds=[0,true]"):
        with pytest.raises(ConfigError, match="a number, not true/false"):
            resolve_settings(Numbers, None, overrides=[bad])
    assert resolve_settings(Numbers, None, overrides=["flag=true", "n=2", "count=rest"]).flag is True
    twice = tmp_path / "twice.yaml"
    twice.write_text("n: 2\nflag: true\nn: 3\n")
    with pytest.raises(ConfigError, match="line 3.*duplicate key 'n'"):
        resolve_settings(Numbers, twice)
    merged = tmp_path / "merged.yaml"  # YAML's merge key may repeat what it merges: not a duplicate
    merged.write_text("per:\n  a: &a {path: p, size: 2}\n  b:\n    <<: *a\n    size: 3\n")
    assert resolve_settings(Numbers, merged).per["b"].size == 3


def test_messages_for_unions_lists_mappings_and_missing_keys():
    """pydantic's raw text: a line per union member under internal tags ('split.train.int', '...float'), "a
    valid list" for seeds=0, "instance of Budget" for [5000, 1], "Field required" without saying what."""

    class Budget(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_samples: int
        epochs: int

    class Grid(BaseModel):
        model_config = ConfigDict(extra="forbid")
        data: str = Field(description="the dataset (on the command line: --data)")
        train: int | float | Literal["rest"] = "rest"
        seeds: list[int] = []
        budgets: list[Budget] = []

    def problem(*overrides: str) -> str:
        with pytest.raises(ConfigError) as err:
            resolve_settings(Grid, None, overrides=list(overrides))
        return err.value.problem

    assert "data: required: the dataset (on the command line: --data)" in problem()
    text = problem("data=x", "train=abc")
    assert "train (command line: train=abc): expected a valid integer or a valid number or 'rest'" in text
    assert text.count("train") == 2  # one problem, not one per union member
    assert "seeds (command line: seeds=0): expected a list, e.g. [0]" in problem("data=x", "seeds=0")
    assert "expected a mapping of epochs, n_samples (key: value), got [5000, 1]" in problem(
        "data=x", "budgets=[[5000, 1]]"
    )


class Runs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upstream: dict[str, Inner] = {}
    fallback: Inner | None = None


def test_errors_say_where_a_bad_key_came_from_and_suggest_the_near_name(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.1\n")
    with pytest.raises(ConfigError) as typed:
        resolve_settings(Outer, cfg, overrides=["sed=3"])
    msg = str(typed.value)
    assert "sed (command line: sed=3): unknown key; did you mean 'seed'?" in msg
    assert "File:" not in msg  # the file is fine: the override is to blame
    cfg.write_text("lr: 0.1\ndata: {pth: a.xyz}\n")
    with pytest.raises(ConfigError) as in_file:
        resolve_settings(Outer, cfg)
    msg = str(in_file.value)
    assert "data.pth: unknown key; did you mean 'path'?" in msg and f"File: {cfg}" in msg
    assert "command line" not in msg
    with pytest.raises(
        ConfigError, match=r"seed \(command line: an option or argument given abc\): Input should be a valid"
    ):
        resolve_settings(Outer, None, flags={"seed": "abc"})
    with pytest.raises(ConfigError, match=r"optimizer \(command line: optimizer\.lr=3\): unknown key"):
        resolve_settings(Outer, cfg, overrides=["optimizer.lr=3"])  # the unknown key is above the typed one


def test_a_section_of_a_larger_config_is_named_in_the_problem_not_as_a_file():
    with pytest.raises(ConfigError) as exc:
        validate(Outer, {"sed": 1}, within="the pretrain section")
    assert "invalid settings in the pretrain section (sed: unknown key; did you mean 'seed'?)" in str(exc.value)
    assert "File:" not in str(exc.value)


def test_suggestions_look_inside_mappings_and_optional_models():
    with pytest.raises(ConfigError, match="upstream.a.sizes.*did you mean 'size'"):
        resolve_settings(Runs, None, overrides=["upstream.a.sizes=2"])
    with pytest.raises(ConfigError, match="fallback.paht.*did you mean 'path'"):
        resolve_settings(Runs, None, overrides=["fallback.paht=x"])
    with pytest.raises(ConfigError) as far:
        resolve_settings(Runs, None, overrides=["zzz=1"])
    assert "did you mean" not in str(far.value)


def test_a_folder_made_for_a_failed_command_is_removed_only_if_nothing_was_written(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError), removed_if_left_empty(fresh):
        (fresh / "cache").mkdir(parents=True)  # empty folders only: nothing to keep
        raise ConfigError("bad input")
    assert not fresh.exists()
    written = tmp_path / "written"
    with pytest.raises(KeyboardInterrupt), removed_if_left_empty(written):
        (written / "cache").mkdir(parents=True)
        (written / "cache" / "stats.npz").write_bytes(b"x")  # a resume needs it
        raise KeyboardInterrupt
    assert (written / "cache" / "stats.npz").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(ConfigError), removed_if_left_empty(mine):
        raise ConfigError("bad input")
    assert mine.is_dir()  # it was there before: not ours to remove


def test_dataset_arg_inline_options_and_bare_path():
    name, spec = parse_dataset_arg("t1x=/d/a,b.h5,split=train,n_samples=50,format=transition1x")
    assert name == "t1x" and spec.path == "/d/a,b.h5" and spec.n_samples == 50
    assert spec.options == {"split": "train"} and spec.format == "transition1x"
    assert DatasetSpec.model_validate({"path": "p", "split": "val"}) == DatasetSpec(path="p", options={"split": "val"})
    name, spec = parse_dataset_arg("data/x.xyz,energy_key=E", default_name="data")
    assert (name, spec.path, spec.options) == ("data", "data/x.xyz", {"energy_key": "E"})
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_dataset_arg("data/x.xyz")
    with pytest.raises(ConfigError, match="n_samples"):
        parse_dataset_arg("a=x.xyz,n_samples=0")
    # in a config, a dataset may be written as the command line's text (it was refused as "not a DatasetSpec")
    assert DatasetSpec.model_validate("bundled:acac") == DatasetSpec(path="bundled:acac")
    text = DatasetSpec.model_validate("/d/a,b.h5,split=train,n_samples=5")
    assert (text.path, text.options, text.n_samples) == ("/d/a,b.h5", {"split": "train"}, 5)

    class Specs(BaseModel):
        upstream: dict[str, DatasetSpec]

    with pytest.raises(ConfigError, match="upstream.a: .*'oops' after the options is not key=value"):
        validate(Specs, {"upstream": {"a": "x.h5,split=1,oops"}})

    class Either(BaseModel):
        fit: str | DatasetSpec | None = None
        data: DatasetSpec | None = None

    def problem(data: dict) -> str:
        with pytest.raises(ConfigError) as err:
            validate(Either, data)
        return err.value.problem

    # written as text, a spec's keys are checked and named like the mapping's (true was read as 1 there)
    assert problem({"data": "x.h5,n_samples=true"}) == "invalid settings (data.n_samples: a number, not true/false)"
    two = problem({"data": "x.h5,n_samples=abc,sampling=xyz"})
    assert "data.n_samples: " in two and "data.sampling: " in two
    # a mapping for `str | DatasetSpec`: the spec's own complaint, without union tags or 'a valid string'
    assert problem({"fit": {"path": "x", "n_samples": 0}}) == (
        "invalid settings (fit.n_samples: Input should be greater than or equal to 1)"
    )


def test_output_rules(tmp_path):
    target = tmp_path / "f.json"
    check_output_file(target, overwrite=False)
    target.write_text("{}")
    with pytest.raises(ConfigError, match="--overwrite"):
        check_output_file(target, overwrite=False)
    check_output_file(target, overwrite=True)
    with pytest.raises(ConfigError, match="existing folder"):
        check_output_file(tmp_path, overwrite=True)
    with pytest.raises(ConfigError, match="existing file"):
        check_output_dir(target)
    assert check_output_dir(tmp_path / "run").is_dir()


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    import os
    import stat

    from atomsift.settings import write_text_atomic

    (tmp_path / "plain.txt").write_text("x")
    write_text_atomic(tmp_path / "atomic.txt", "x")
    mode = stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert (tmp_path / "atomic.txt").read_text() == "x"
    # checkpoints, CSI caches and subset files are written the same way (they came out 0600)
    import numpy as np
    import torch

    from atomsift.csi.cache import save_stats
    from atomsift.data.sampling import save_subset
    from atomsift.models import AtomsModel, build_backbone, save_checkpoint

    model = AtomsModel(build_backbone("painn", hidden=8, num_layers=1), {"energy": {"kind": "energy"}})
    written = [
        save_checkpoint(model, tmp_path / "model.pt"),
        save_stats(tmp_path / "stats.npz", {"mean": np.zeros(3)}, {"what": "test"}),
        save_subset(tmp_path / "subset.json", np.arange(3)),
    ]
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path
    os.chmod(tmp_path / "model.pt", 0o600)  # a private file stays private when it is replaced
    save_checkpoint(model, tmp_path / "model.pt")
    assert stat.S_IMODE(os.stat(tmp_path / "model.pt").st_mode) == 0o600
    assert torch.load(tmp_path / "model.pt", weights_only=False)  # and they are complete files
    assert not list(tmp_path.glob(".*tmp*"))
