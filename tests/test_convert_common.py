"""Shared converter machinery: the detectron2 pickle reader accepts only arrays; the
safetensors reader yields lazy loaders and names a truncated file in one line."""

import json
import pickle
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from convert.common import ConversionError, read_detectron2_pickle, read_safetensors


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


def test_safetensors_yields_its_tensors_lazily(tmp_path):
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "b.index": np.arange(4, dtype=np.int64)}
    save_file(arrays, tmp_path / "m.safetensors")
    got = {k: (load(), n) for k, load, n in read_safetensors(tmp_path / "m.safetensors")}
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k][0], v)
        assert got[k][0].dtype == v.dtype and got[k][1] == v.nbytes


@pytest.mark.parametrize("cut", [4, 20, -3])
def test_truncated_safetensors_is_one_line_naming_the_file(tmp_path, cut):
    save_file({"a": np.zeros((4, 4), np.float32)}, tmp_path / "m.safetensors")
    path = tmp_path / "m.safetensors"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ConversionError) as e:
        list(read_safetensors(path))
    msg = str(e.value)
    assert msg.startswith(f"{path}: not a readable safetensors file (") and "\n" not in msg
    assert msg.endswith("it is truncated or corrupt; download it again")


def test_safetensors_dtype_numpy_cannot_hold_names_the_tensor(tmp_path):
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(2))
    [(key, load, nbytes)] = list(read_safetensors(path))
    assert (key, nbytes) == ("w", 2)
    with pytest.raises(ConversionError, match=r"tensor 'w' \(F8_E4M3\) cannot be read"):
        load()
