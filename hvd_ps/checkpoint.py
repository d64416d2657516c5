"""The checkpoint file: named arrays and a JSON manifest, written atomically, read back checked.

Format (version 1), readable with numpy and the standard library alone, never with pickle:

* a zip archive without compression (the layout of numpy's ``.npz``): each array is a member
  ``<name>.npy`` in numpy's ``.npy`` format (``np.load(path)`` opens the file as it is); the
  zip format keeps a CRC-32 of every member, which reading verifies;
* a member ``manifest.json``: ``{"format": "hvd_ps-checkpoint", "version": 1, "meta": {...},
  "arrays": {name: {"shape": [...], "dtype": "float32"}}}``, where ``meta`` is what the writer
  wants to find again (the strategy and its arguments, the groups, the step counter, ...).

:func:`write` writes a temporary file next to ``path``, fsyncs it and renames it over
``path`` (then fsyncs the directory), so a reader sees the old file or the new one, never half
of one. :func:`read` refuses, with a :class:`~hvd_ps.errors.CheckpointError` that says what is
wrong, a file that is torn, foreign, of another version, or whose arrays do not match their
manifest or their checksums; :func:`expect` compares what was saved with what a job has.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from .errors import CheckpointError

FORMAT = "hvd_ps-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"


def write(path: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> int:
    """Write ``arrays`` and ``meta`` to ``path`` atomically. Returns the bytes written."""
    for name in arrays:
        if not name or name.startswith("/") or ".." in name.split("/") or name == MANIFEST:
            raise CheckpointError(f"array name {name!r} cannot be stored in a checkpoint")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "meta": dict(meta),
        "arrays": {
            name: {"shape": list(np.shape(a)), "dtype": np.asarray(a).dtype.str}
            for name, a in arrays.items()
        },
    }
    body = json.dumps(manifest, sort_keys=True).encode("utf-8")  # meta must be plain JSON
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".hvd_ps-checkpoint-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, a in arrays.items():
                    with zf.open(name + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(
                            member, np.ascontiguousarray(a), allow_pickle=False
                        )
                zf.writestr(MANIFEST, body)
            raw.flush()
            os.fsync(raw.fileno())
            size = raw.tell()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size


def read(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """The arrays and the ``meta`` of a checkpoint, after checking every part of it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: check the path")
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
            except KeyError:
                raise CheckpointError(
                    f"{path} is not an hvd_ps checkpoint (it has no {MANIFEST})"
                ) from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not an hvd_ps checkpoint (foreign manifest)")
            if manifest.get("version") != VERSION:
                raise CheckpointError(
                    f"{path} is a version {manifest.get('version')!r} checkpoint; this hvd_ps "
                    f"reads version {VERSION}"
                )
            described = manifest.get("arrays") or {}
            members = {n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")}
            if members != set(described):
                missing = sorted(set(described) - members)
                extra = sorted(members - set(described))
                raise CheckpointError(
                    f"{path}: arrays do not match the manifest (missing {missing}, "
                    f"unlisted {extra}); the file was altered"
                )
            arrays = {}
            for name, spec in described.items():
                with zf.open(name + ".npy") as member:
                    a = np.lib.format.read_array(member, allow_pickle=False)
                    member.read()  # to the end: the zip layer checks the CRC-32 there
                if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
                    raise CheckpointError(
                        f"{path}: array {name!r} is {a.dtype.str}{list(a.shape)}, its manifest "
                        f"says {spec['dtype']}{spec['shape']}; the file was altered"
                    )
                arrays[name] = a
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is torn or corrupt: {err}; start from another checkpoint"
        ) from None
    return arrays, dict(manifest.get("meta") or {})


def expect(path: str, meta: Mapping[str, Any], key: str, value: Any) -> None:
    """Refuse the checkpoint unless ``meta[key] == value``, naming both sides."""
    saved = meta.get(key)
    if saved != value:
        raise CheckpointError(
            f"{path} was saved with {key} = {saved!r}, this job has {value!r}; resume with "
            "the same setting or start from another checkpoint"
        )
