"""errors.naming_file: a record's error raised deep in a model or extractor gets the dataset's file."""

from __future__ import annotations

import ase.io
import pytest
from ase import Atoms

from atomsift.csi.extract import check_geometry
from atomsift.data import open_dataset
from atomsift.errors import ConfigError, DataError, naming_file


def test_an_error_without_a_file_gets_the_dataset_s_and_one_with_a_file_keeps_it(tmp_path):
    path = tmp_path / "periodic without cell.extxyz"
    ase.io.write(path, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], pbc=True)], format="extxyz")
    ds = open_dataset(path)
    with pytest.raises(DataError) as exc, naming_file(ds.path):
        check_geometry(ds[0], "soap")
    assert exc.value.file == str(path)
    assert f"File: {path}. Record: frame0." in str(exc.value)
    with pytest.raises(DataError) as kept, naming_file(ds.path):
        raise DataError("bad", file="other.xyz")
    assert kept.value.file == "other.xyz"
    with pytest.raises(ConfigError) as settings, naming_file(ds.path):  # a settings error is not the data's
        raise ConfigError("the model has no head 'nope'")
    assert settings.value.file is None
