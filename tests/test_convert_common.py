"""Shared converter machinery: the detectron2 pickle reader accepts only arrays."""

import pickle

import numpy as np
import pytest

from convert.common import ConversionError, read_detectron2_pickle


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_detectron2_pickle_yields_its_arrays(tmp_path):
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "b.index": np.arange(4, dtype=np.int64)}
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    got = {k: load() for k, load, _ in read_detectron2_pickle(tmp_path / "m.pkl")}
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype


def test_detectron2_pickle_never_runs_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump({"model": {"a": _Exploit()}}, f)
    with pytest.raises(ConversionError, match="refusing to load"):
        list(read_detectron2_pickle(tmp_path / "m.pkl"))
    assert not (tmp_path / "PWNED").exists()


def test_detectron2_pickle_rejects_non_array_entries(tmp_path):
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump({"model": {"a": [1, 2]}}, f)
    with pytest.raises(ConversionError, match="'a' is a list"):
        list(read_detectron2_pickle(tmp_path / "m.pkl"))
