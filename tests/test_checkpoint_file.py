"""The checkpoint file format (hvd_ps/checkpoint.py): round trip, atomic replace, and every way a
file can be refused."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from hvd_ps import checkpoint
from hvd_ps.errors import CheckpointError, HvdPsError


def arrays():
    rng = np.random.default_rng(0)
    return {
        "group0/param/dense0_weight": rng.standard_normal((3, 4)).astype(np.float32),
        "group0/param/dense0_bias": np.arange(3, dtype=np.float16),
        "ps/0": rng.standard_normal(15),
        "empty": np.zeros((0,), np.float32),
    }


META = {"strategy": "EASGD(period=4, alpha=0.2, mode='sync', overlap=0)", "step": 17}


def test_round_trip_is_exact_and_readable_by_numpy_alone(tmp_path):
    path = str(tmp_path / "ckpt")
    size = checkpoint.write(path, arrays(), META)
    assert size == os.path.getsize(path)
    got, meta = checkpoint.read(path)
    assert meta == META
    assert set(got) == set(arrays())
    for name, a in arrays().items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        np.testing.assert_array_equal(got[name], a)
    with np.load(path, allow_pickle=False) as plain:  # the .npz layout, no hvd_ps needed
        np.testing.assert_array_equal(plain["ps/0"], arrays()["ps/0"])


def test_write_replaces_atomically_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "ckpt")
    checkpoint.write(path, arrays(), {"step": 1})
    checkpoint.write(path, arrays(), {"step": 2})
    assert checkpoint.read(path)[1] == {"step": 2}
    assert os.listdir(tmp_path) == ["ckpt"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "ckpt")
    checkpoint.write(path, arrays(), {"step": 1})
    with pytest.raises(TypeError):
        checkpoint.write(path, arrays(), {"step": object()})  # meta must be plain JSON
    assert checkpoint.read(path)[1] == {"step": 1}
    assert os.listdir(tmp_path) == ["ckpt"]


def refused(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoint.read(str(path))
    assert isinstance(info.value, HvdPsError)


def test_torn_file_is_refused(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.write(str(path), arrays(), META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(path, "torn or corrupt")


def test_flipped_byte_is_refused_by_the_checksum(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.write(str(path), {"x": np.zeros(1000, np.float32)}, META)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x00" * 64) + 32  # inside the array's zeros
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(path, "torn or corrupt: .*CRC")


def test_foreign_files_are_refused(tmp_path):
    refused(tmp_path / "nothing", "no checkpoint at")
    npz = tmp_path / "plain.npz"
    np.savez(npz, x=np.ones(3))
    refused(npz, "has no manifest.json")
    text = tmp_path / "text"
    text.write_text("hello")
    refused(text, "torn or corrupt")
    other = tmp_path / "other"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": "something-else"}))
    refused(other, "foreign manifest")


def test_other_version_is_refused(tmp_path):
    path = tmp_path / "v2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": checkpoint.FORMAT, "version": 2}))
    refused(path, "version 2 checkpoint; this hvd_ps reads version 1")


def test_arrays_that_disagree_with_the_manifest_are_refused(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.write(str(path), {"x": np.ones(4, np.float32)}, META)
    altered = tmp_path / "altered"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(altered, "w") as dst:
        manifest = json.loads(src.read("manifest.json"))
        manifest["arrays"]["x"]["shape"] = [5]
        dst.writestr("manifest.json", json.dumps(manifest))
        dst.writestr("x.npy", src.read("x.npy"))
    refused(altered, r"array 'x' is <f4\[4\], its manifest says <f4\[5\]")
    missing = tmp_path / "missing"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(missing, "w") as dst:
        dst.writestr("manifest.json", src.read("manifest.json"))
    refused(missing, r"missing \['x'\]")


def test_expect_names_both_sides(tmp_path):
    checkpoint.expect("ckpt", META, "step", 17)
    with pytest.raises(
        CheckpointError, match=r"saved with strategy = .*EASGD.*this job has 'DiLoCo"
    ):
        checkpoint.expect("ckpt", META, "strategy", "DiLoCo(period=16)")


def test_bad_array_names_are_refused(tmp_path):
    for name in ("", "/abs", "a/../b", "manifest.json"):
        with pytest.raises(CheckpointError, match="cannot be stored"):
            checkpoint.write(str(tmp_path / "c"), {name: np.ones(1)}, {})
