"""The checkpoint files: shards of named arrays and a manifest, committed atomically, read checked.

Format (version 2), readable with numpy and the standard library alone, never with pickle. A
checkpoint at ``path`` is the manifest ``path`` and the shards it names, in the same directory:

* each shard ``<basename>.<part>.<16 hex digits>.npz`` (e.g. ``job.hvdps.group0.1f...9a.npz``)
  is a zip archive without compression in numpy's ``.npz`` layout: each array is a member
  ``<name>.npy`` in numpy's ``.npy`` format, so ``np.load(shard)[name]`` reads it; the zip format
  keeps a CRC-32 of every member, which reading verifies. The digits are new for every save, so
  a save never touches the files of the checkpoint it replaces;
* the manifest ``path`` is a zip archive with one member ``manifest.json`` (CRC-32 checked too)::

      {"format": "hvd_ps-checkpoint", "version": 2, "meta": {...},
       "shards": [{"name": "job.hvdps.group0.1f...9a.npz", "bytes": 409600123,
                   "arrays": {"group0/param/dense0_weight":
                              {"shape": [4096, 64], "dtype": "<f4", "crc32": 2914731163}}}]}

  ``meta`` is what the writer wants to find again (the strategy and its arguments, the groups,
  the step counter, ...); every shard is listed with its size in bytes and, for each of its
  arrays, the shape, the dtype and the CRC-32 of its ``.npy`` member.

Writing is two steps, so that many processes can write one checkpoint, each its own shard,
without sending the arrays to one another: :func:`write_shard` writes one shard (straight from
the arrays' memory, fsynced, with its directory) and returns its entry for the manifest;
:func:`commit` checks that every shard is in place with its size, then writes the manifest to a
temporary file, fsyncs it, renames it over ``path`` and fsyncs the directory. That rename is
the commit point: a reader sees the old checkpoint or the new one, never half of one, and a
crash before it leaves the old checkpoint whole. Only after the rename do the replaced
checkpoint's shards (and those of saves that never committed) become spares, one hidden file
``.<basename>.<part>.spare`` per part (:func:`retire`), which the next save of that part renames
to its new name and overwrites in place: rewriting a file's blocks is about twice as fast as
allocating new ones and freeing the old (measured here: 0.10 s against 0.25 s for 400 MB with
the fsync). So a checkpoint's directory holds its files and, between saves, the previous
shards as spares; deleting spares is safe. :func:`write` does both steps in one process.

:func:`read_manifest` and :func:`read_shard` (and :func:`read`, everything at once) refuse,
with a :class:`~hvd_ps.errors.CheckpointError` that names what is wrong, a manifest that is
torn, foreign or of another version, and a shard that is missing, of another size, torn,
altered, or from another checkpoint (its CRC-32s differ from the manifest's); :func:`expect`
compares what was saved with what a job has. Reading by hand::

    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    for shard in manifest["shards"]:
        with np.load(os.path.join(os.path.dirname(path), shard["name"])) as arrays:
            ...  # arrays[name] for name in shard["arrays"]
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import tempfile
import zipfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

from .errors import CheckpointError

FORMAT = "hvd_ps-checkpoint"
VERSION = 2
MANIFEST = "manifest.json"
#: bytes written between two requests to the kernel to start writing them to the disk
_WRITEBACK = 32 << 20
_START_WRITE = 2  # SYNC_FILE_RANGE_WRITE
_libc: Any = None


#: a shard's name: the checkpoint's name, the part, 16 hex digits
_SHARD = re.compile(r"(.+)\.([a-z0-9]+)\.[0-9a-f]{16}\.npz")


def _shard_parts(name: str) -> Tuple[Optional[str], Optional[str]]:
    """The checkpoint's name and the part of a shard's name (None, None if it is not one)."""
    found = _SHARD.fullmatch(name)
    return (found[1], found[2]) if found else (None, None)


def _spare(path: str, part: str) -> str:
    """Where the previous shard of ``part`` waits to be overwritten by the next save."""
    return os.path.join(_folder(path), f".{os.path.basename(path)}.{part}.spare")


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _start_writeback(fd: int, start: int, end: int) -> None:
    """Ask Linux to start writing ``[start, end)`` of ``fd`` to the disk (``sync_file_range``),
    so that the final fsync waits for the tail only; elsewhere the fsync does it all."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True).sync_file_range
            _libc.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        except (AttributeError, OSError):
            _libc = False
    if _libc and end > start:
        _libc(fd, start, end - start, _START_WRITE)


def _storable(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and ".." not in parts and name != MANIFEST


def _npy_header(a: np.ndarray[Any, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    fmt: Any = np.lib.format  # numpy ships these functions without annotations
    header = fmt.header_data_from_array_1_0(a)
    try:
        fmt.write_array_header_1_0(buf, header)
    except ValueError:  # a header of more than 64 KiB
        fmt.write_array_header_2_0(buf, header)
    return buf.getvalue()


def write_shard(
    path: str, part: str, arrays: Union[Mapping[str, Any], Iterable[Tuple[str, Any]]]
) -> Dict[str, Any]:
    """Write ``arrays`` (numpy arrays by name, or ``(name, array)`` pairs, taken one at a
    time) to a new shard of the checkpoint ``path`` named after ``part`` (lower-case letters
    and digits, e.g. ``group0``), straight from the arrays' memory; fsync it and its
    directory. Returns the shard's entry for :func:`commit`."""
    if not re.fullmatch(r"[a-z0-9]+", part):
        raise CheckpointError(f"part={part!r} must be lower-case letters and digits")
    pairs = arrays.items() if isinstance(arrays, Mapping) else arrays
    folder = _folder(path)
    shard = f"{os.path.basename(path)}.{part}.{secrets.token_hex(8)}.npz"
    full = os.path.join(folder, shard)
    listed: Dict[str, Any] = {}
    try:  # overwrite the spare in place: its blocks need no allocating, nor freeing
        os.rename(_spare(path, part), full)
        fd = os.open(full, os.O_RDWR)
    except FileNotFoundError:
        fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "r+b") as raw:
            started = 0
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
                for name, value in pairs:
                    if not _storable(name) or name in listed:
                        raise CheckpointError(f"array name {name!r} cannot be stored here")
                    a = np.asarray(value)
                    if not a.flags.c_contiguous:
                        a = a.copy(order="C")
                    if a.dtype.hasobject:
                        raise CheckpointError(f"array {name!r} holds Python objects: not stored")
                    data = a.reshape(-1).view(np.uint8)
                    with zf.open(name + ".npy", "w", force_zip64=True) as member:
                        member.write(_npy_header(a))
                        for at in range(0, data.size, _WRITEBACK):
                            member.write(data[at : at + _WRITEBACK].data)  # CRC-32, then file
                            if raw.tell() - started >= _WRITEBACK:
                                raw.flush()
                                _start_writeback(fd, started, raw.tell())
                                started = raw.tell()
                    spec = {"shape": list(a.shape), "dtype": a.dtype.str}
                    listed[name] = dict(spec, crc32=zf.getinfo(name + ".npy").CRC)
            raw.truncate()  # what is left of the spare
            raw.flush()
            os.fsync(raw.fileno())
            size = raw.tell()
    except BaseException:
        retire(path, [shard])
        raise
    _fsync_dir(folder)
    return {"name": shard, "bytes": size, "arrays": listed}


def _listed_shards(path: str) -> List[str]:
    """The shards the manifest at ``path`` names (none if it is not a readable manifest)."""
    try:
        return [s["name"] for s in read_manifest(path)["shards"]]
    except (CheckpointError, KeyError, TypeError):
        return []


def commit(path: str, shards: List[Mapping[str, Any]], meta: Mapping[str, Any]) -> List[str]:
    """Make ``shards`` (entries of :func:`write_shard`) the checkpoint ``path``: check that each
    is in place with its size, then write the manifest atomically. Returns the shards of the
    checkpoint it replaced, and of saves that never committed, for :func:`retire`."""
    folder = _folder(path)
    owner: Dict[str, str] = {}
    for s in shards:
        full = os.path.join(folder, s["name"])
        if not os.path.isfile(full):
            raise CheckpointError(
                f"shard {s['name']} is not in {folder} as this rank sees it: every group's "
                f"leader writes its shard next to {path}, so put it where all of them can"
            )
        if os.path.getsize(full) != s["bytes"]:
            raise CheckpointError(
                f"shard {full} is {os.path.getsize(full)} bytes, its writer wrote {s['bytes']}"
            )
        for name in s["arrays"]:
            if name in owner:
                raise CheckpointError(f"array {name!r} is in {owner[name]} and in {s['name']}")
            owner[name] = s["name"]
    before = _listed_shards(path)
    manifest = {"format": FORMAT, "version": VERSION, "meta": dict(meta), "shards": list(shards)}
    body = json.dumps(manifest, sort_keys=True).encode("utf-8")  # meta must be plain JSON
    fd, tmp = tempfile.mkstemp(prefix=".hvd_ps-checkpoint-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr(MANIFEST, body)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    base = os.path.basename(path)
    ours = {n for n in os.listdir(folder) if _shard_parts(n)[0] == base}
    return sorted((set(before) | ours) - {s["name"] for s in shards})


def retire(path: str, shards: Iterable[str]) -> None:
    """Make each of ``shards`` (names of shards next to ``path`` that the manifest no longer
    lists) the spare of its part, which the next save of that part overwrites (replacing an
    older spare of the part). Names that are not a shard's are left alone."""
    folder = _folder(path)
    for name in shards:
        part = _shard_parts(name)[1]
        if part is not None and os.path.basename(name) == name:
            try:
                os.replace(os.path.join(folder, name), _spare(path, part))
            except FileNotFoundError:
                pass


def abandon(path: str, shards: Iterable[str]) -> None:
    """:func:`retire` those of ``shards`` that the manifest at ``path`` does not list (a save
    that failed: its shards, unless it failed after its commit)."""
    listed = set(_listed_shards(path))
    retire(path, [s for s in shards if s not in listed])


def write(path: str, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> int:
    """Write ``arrays`` and ``meta`` as the checkpoint ``path`` (one shard), atomically,
    replacing the checkpoint there. Returns the bytes written (the shard and the manifest)."""
    shard = write_shard(path, "all", arrays)
    try:
        stale = commit(path, [shard], meta)
    except BaseException:
        abandon(path, [shard["name"]])
        raise
    retire(path, stale)
    return int(shard["bytes"]) + os.path.getsize(path)


def _torn(what: str, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{what} is torn or corrupt: {err}; start from another checkpoint")


_READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, UnicodeDecodeError)


def read_manifest(path: str) -> Dict[str, Any]:
    """The manifest of the checkpoint ``path`` (``meta``, ``shards``), checked."""
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
    except CheckpointError:
        raise
    except _READ_ERRORS as err:
        raise _torn(path, err) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an hvd_ps checkpoint (foreign manifest)")
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {manifest.get('version')!r} checkpoint; this hvd_ps reads "
            f"version {VERSION}"
        )
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(_is_entry(s) for s in shards):
        raise CheckpointError(f"{path}: its manifest's list of shards is malformed; altered")
    return manifest


def _is_entry(s: Any) -> bool:
    name = s.get("name") if isinstance(s, dict) else None
    return (
        isinstance(name, str)
        and os.path.basename(name) == name
        and not name.startswith(".")
        and isinstance(s.get("bytes"), int)
        and isinstance(s.get("arrays"), dict)
    )


def shard_of(manifest: Mapping[str, Any], array: str) -> Mapping[str, Any]:
    """The manifest's entry of the shard that holds ``array``."""
    for s in manifest["shards"]:
        if array in s["arrays"]:
            entry: Mapping[str, Any] = s
            return entry
    raise CheckpointError(f"the checkpoint has no array {array!r}; it was saved by another job")


def read_shard(
    path: str, shard: Mapping[str, Any], names: Optional[Iterable[str]] = None
) -> Dict[str, np.ndarray[Any, Any]]:
    """The arrays ``names`` (default: all) of ``shard`` (an entry of the manifest of ``path``),
    after checking the shard against the manifest: its size, its arrays and their CRC-32s."""
    full = os.path.join(_folder(path), shard["name"])
    what = f"shard {shard['name']} of {path}"
    if not os.path.isfile(full):
        raise CheckpointError(
            f"{what} is missing: a checkpoint is its manifest and every shard it lists, in one "
            "directory; copy them together or start from another checkpoint"
        )
    if os.path.getsize(full) != shard["bytes"]:
        raise CheckpointError(
            f"{what} is {os.path.getsize(full)} bytes, its manifest says {shard['bytes']}: it is "
            "torn or was replaced; start from another checkpoint"
        )
    described: Dict[str, Any] = shard["arrays"]
    out = {}
    try:
        with zipfile.ZipFile(full) as zf:
            members = {i.filename[: -len(".npy")]: i for i in zf.infolist()}
            if set(members) != set(described) or not all(n.endswith(".npy") for n in zf.namelist()):
                missing = sorted(set(described) - set(members))
                extra = sorted(set(members) - set(described))
                raise CheckpointError(
                    f"{what}: arrays do not match the manifest (missing {missing}, unlisted "
                    f"{extra}); the shard was altered or is from another checkpoint"
                )
            for name, spec in described.items():
                if members[name].CRC != spec.get("crc32"):
                    raise CheckpointError(
                        f"{what}: array {name!r} has CRC-32 {members[name].CRC}, the manifest "
                        f"says {spec.get('crc32')}: the shard is from another checkpoint"
                    )
            for name in described if names is None else names:
                spec = described[name]
                with zf.open(name + ".npy") as member:
                    fmt: Any = np.lib.format  # no annotations in numpy
                    a = fmt.read_array(member, allow_pickle=False)
                    member.read()  # to the end: the zip layer checks the CRC-32 there
                if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
                    raise CheckpointError(
                        f"{what}: array {name!r} is {a.dtype.str}{list(a.shape)}, the manifest "
                        f"says {spec['dtype']}{spec['shape']}; the checkpoint was altered"
                    )
                out[name] = a
    except CheckpointError:
        raise
    except _READ_ERRORS as err:
        raise _torn(what, err) from None
    return out


def read(path: str) -> Tuple[Dict[str, np.ndarray[Any, Any]], Dict[str, Any]]:
    """Every array and the ``meta`` of a checkpoint, after checking every part of it."""
    manifest = read_manifest(path)
    arrays: Dict[str, np.ndarray[Any, Any]] = {}
    for shard in manifest["shards"]:
        arrays.update(read_shard(path, shard))
    return arrays, dict(manifest.get("meta") or {})


def expect(path: str, meta: Mapping[str, Any], key: str, value: Any) -> None:
    """Refuse the checkpoint unless ``meta[key] == value``, naming both sides."""
    saved = meta.get(key)
    if saved != value:
        raise CheckpointError(
            f"{path} was saved with {key} = {saved!r}, this job has {value!r}; resume with "
            "the same setting or start from another checkpoint"
        )
