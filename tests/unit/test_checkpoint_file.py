"""The checkpoint files (hvd_ps/checkpoint.py): round trip, shards written apart and committed by
the manifest, atomic replace, and every way a checkpoint can be refused."""

from __future__ import annotations

import json
import os
import shutil
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
        "scalar": np.array(2.5),
        "transposed": np.arange(12, dtype=np.int64).reshape(3, 4).T,  # not contiguous
    }


META = {"strategy": "EASGD(period=4, alpha=0.2, mode='sync', overlap=0)", "step": 17}


def shards(path):
    return [s["name"] for s in checkpoint.read_manifest(str(path))["shards"]]


def test_round_trip_is_exact_and_readable_by_numpy_and_the_standard_library(tmp_path):
    path = str(tmp_path / "ckpt")
    size = checkpoint.write(path, arrays(), META)
    assert size == sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path))
    got, meta = checkpoint.read(path)
    assert meta == META
    assert set(got) == set(arrays())
    for name, a in arrays().items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
        np.testing.assert_array_equal(got[name], a)
    # by hand, as the module's docstring says: no hvd_ps needed
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["format"] == "hvd_ps-checkpoint" and manifest["version"] == 2
    (shard,) = manifest["shards"]
    assert shard["name"].startswith("ckpt.all.") and shard["name"].endswith(".npz")
    with np.load(os.path.join(tmp_path, shard["name"]), allow_pickle=False) as plain:
        np.testing.assert_array_equal(plain["ps/0"], arrays()["ps/0"])
        assert set(plain.files) == set(shard["arrays"])


def test_shards_written_apart_make_one_checkpoint(tmp_path):
    path = str(tmp_path / "job.hvdps")
    a = checkpoint.write_shard(path, "group0", {"group0/x": np.ones(5), "ps/0": np.zeros(2)})
    pairs = iter([("group1/x", np.full(5, 2.0)), ("ps/1", np.arange(3))])  # taken one by one
    b = checkpoint.write_shard(path, "group1", pairs)
    assert not os.path.exists(path)  # nothing is a checkpoint before the commit
    assert checkpoint.commit(path, [a, b], META) == []
    got, meta = checkpoint.read(path)
    assert meta == META and sorted(got) == ["group0/x", "group1/x", "ps/0", "ps/1"]
    np.testing.assert_array_equal(got["group1/x"], np.full(5, 2.0))
    manifest = checkpoint.read_manifest(path)
    assert checkpoint.shard_of(manifest, "ps/1")["name"] == b["name"]
    only = checkpoint.read_shard(path, checkpoint.shard_of(manifest, "ps/0"), ["ps/0"])
    assert list(only) == ["ps/0"]


def test_commit_refuses_a_shard_it_cannot_see_and_an_array_in_two_shards(tmp_path):
    path = str(tmp_path / "job.hvdps")
    a = checkpoint.write_shard(path, "group0", {"x": np.ones(5)})
    b = checkpoint.write_shard(path, "group1", {"x": np.ones(5)})
    with pytest.raises(CheckpointError, match=r"array 'x' is in job.hvdps.group0.* and in"):
        checkpoint.commit(path, [a, b], META)
    os.unlink(tmp_path / b["name"])
    with pytest.raises(CheckpointError, match=r"is not in .* as this rank sees it: every group's"):
        checkpoint.commit(path, [b], META)
    with open(tmp_path / a["name"], "ab") as f:
        f.write(b"more")
    with pytest.raises(CheckpointError, match=r"is \d+ bytes, its writer wrote \d+"):
        checkpoint.commit(path, [a], META)
    assert not os.path.exists(path)


def visible(folder):
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def test_write_replaces_atomically_and_keeps_the_old_shards_as_spares(tmp_path):
    path = str(tmp_path / "ckpt")
    checkpoint.write(path, arrays(), {"step": 1})
    first = shards(path)
    inode, size = os.stat(tmp_path / first[0]).st_ino, os.path.getsize(tmp_path / first[0])
    checkpoint.write(path, arrays(), {"step": 2})
    assert checkpoint.read(path)[1] == {"step": 2}
    assert shards(path) != first  # new shards: the old ones stayed whole until the commit
    assert visible(tmp_path) == sorted(["ckpt"] + shards(path))
    assert sorted(os.listdir(tmp_path)) == sorted([".ckpt.all.spare", "ckpt"] + shards(path))
    assert os.stat(tmp_path / ".ckpt.all.spare").st_ino == inode  # the first shard, retired
    checkpoint.write(path, {"small": np.ones(3)}, {"step": 3})  # overwrites the spare in place
    assert os.stat(tmp_path / shards(path)[0]).st_ino == inode
    got, meta = checkpoint.read(path)  # what was left of the spare was cut off
    assert meta == {"step": 3} and list(got) == ["small"]
    assert os.path.getsize(tmp_path / shards(path)[0]) < size


def test_a_save_that_never_commits_leaves_the_old_checkpoint_and_is_swept_later(tmp_path):
    path = str(tmp_path / "ckpt")
    checkpoint.write(path, arrays(), {"step": 1})
    checkpoint.write_shard(path, "group0", arrays())  # then the job dies before the commit
    assert checkpoint.read(path)[1] == {"step": 1}
    (tmp_path / "ckpt.other").write_text("not a shard of ckpt")  # left alone
    (tmp_path / "ckpt.x.group0.0123456789abcdef.npz").write_text("a shard of ckpt.x")  # too
    checkpoint.write(path, arrays(), {"step": 2})
    assert visible(tmp_path) == sorted(
        ["ckpt", "ckpt.other", "ckpt.x.group0.0123456789abcdef.npz"] + shards(path)
    )
    assert {".ckpt.all.spare", ".ckpt.group0.spare"} <= set(os.listdir(tmp_path))


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt")
    checkpoint.write(path, arrays(), {"step": 1})
    before = visible(tmp_path)
    with pytest.raises(TypeError):
        checkpoint.write(path, arrays(), {"step": object()})  # meta must be plain JSON
    assert checkpoint.read(path)[1] == {"step": 1}
    assert visible(tmp_path) == before


def refused(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoint.read(str(path))
    assert isinstance(info.value, HvdPsError)


def test_torn_manifest_is_refused(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.write(str(path), arrays(), META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(path, "ckpt is torn or corrupt")


def test_flipped_byte_in_the_manifest_is_refused_by_its_checksum(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.write(str(path), arrays(), META)
    data = bytearray(path.read_bytes())
    at = data.index(b'"step": 17') + len('"step": 1')
    data[at] ^= 0x01  # 17 -> 16: still JSON
    path.write_bytes(bytes(data))
    refused(path, "ckpt is torn or corrupt: .*CRC")


def test_flipped_byte_in_a_shard_is_refused_by_its_checksum(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.write(str(path), {"x": np.zeros(1000, np.float32)}, META)
    shard = tmp_path / shards(path)[0]
    data = bytearray(shard.read_bytes())
    at = data.index(b"\x00" * 64) + 32  # inside the array's zeros
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    refused(path, r"shard ckpt.all.[0-9a-f]{16}.npz of .* is torn or corrupt: .*CRC")


def test_missing_torn_or_foreign_shards_are_refused(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.write(str(path), {"x": np.zeros(1000, np.float32)}, META)
    shard = tmp_path / shards(path)[0]
    kept = shard.read_bytes()
    shard.write_bytes(kept[: len(kept) // 2])
    refused(path, r"is \d+ bytes, its manifest says \d+: it is torn or was replaced")
    shard.unlink()
    refused(path, r"shard ckpt.all.[0-9a-f]{16}.npz of .* is missing: .*copy them together")
    # the shard of another checkpoint of the same shapes, under this checkpoint's name
    other = tmp_path / "other"
    other.mkdir()
    checkpoint.write(str(other / "ckpt"), {"x": np.ones(1000, np.float32)}, META)
    shutil.copy(other / shards(other / "ckpt")[0], shard)
    refused(path, r"array 'x' has CRC-32 \d+, the manifest says \d+: the shard is from another")
    # a shard in another directory (a manifest copied without its shards)
    shutil.copy(path, other / "alone")
    refused(other / "alone", r"shard ckpt.all.* of .*alone is missing")


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


@pytest.mark.parametrize("version", [1, 3])
def test_other_versions_are_refused(tmp_path, version):
    path = tmp_path / "ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"format": checkpoint.FORMAT, "version": version}))
    refused(path, f"version {version} checkpoint; this hvd_ps reads version 2")


def _edit(path, change):
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    change(manifest)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))


def test_arrays_that_disagree_with_the_manifest_are_refused(tmp_path):
    path = tmp_path / "ckpt"
    checkpoint.write(str(path), {"x": np.ones(4, np.float32)}, META)
    _edit(path, lambda m: m["shards"][0]["arrays"]["x"].update(shape=[5]))
    refused(path, r"array 'x' is <f4\[4\], the manifest says <f4\[5\]; the checkpoint was altered")
    _edit(path, lambda m: m["shards"][0]["arrays"].update(y=m["shards"][0]["arrays"]["x"]))
    refused(path, r"arrays do not match the manifest \(missing \['y'\], unlisted \[\]\)")
    _edit(path, lambda m: m["shards"][0].update(name="../elsewhere.npz"))
    refused(path, r"list of shards is malformed")


def test_expect_names_both_sides(tmp_path):
    checkpoint.expect("ckpt", META, "step", 17)
    with pytest.raises(
        CheckpointError, match=r"saved with strategy = .*EASGD.*this job has 'DiLoCo"
    ):
        checkpoint.expect("ckpt", META, "strategy", "DiLoCo(period=16)")


def test_bad_array_and_part_names_are_refused(tmp_path):
    for name in ("", "/abs", "a/../b", "manifest.json"):
        with pytest.raises(CheckpointError, match="cannot be stored"):
            checkpoint.write(str(tmp_path / "c"), {name: np.ones(1)}, {})
    with pytest.raises(CheckpointError, match=r"part='group.0' must be lower-case letters"):
        checkpoint.write_shard(str(tmp_path / "c"), "group.0", {})
    with pytest.raises(CheckpointError, match="holds Python objects"):
        checkpoint.write(str(tmp_path / "c"), {"o": np.array([None])}, {})
    assert visible(tmp_path) == []
