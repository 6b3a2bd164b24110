"""Checkpoints: one NumPy ``.npz`` file holding everything needed to resume exactly.

Layout of the file (every entry a plain array, so it loads with ``allow_pickle=False``)::

    format        0-d str    "gla_np-checkpoint-1"
    config        0-d str    the run's configuration as JSON (model, task, optimizer, seed, ...)
    step          0-d int64  the number of training steps taken
    extra         0-d str    JSON for anything else worth keeping (say, the metrics so far)
    param/<name>  the parameters, one array per name
    opt/<key>     the optimizer state (see gla_np.optim: "step", "m/<name>", ...)

Saving is atomic (``write_atomic``, from ``gla_np._files``): the arrays go to a temporary file
in the same directory, which is flushed and fsync'ed and then renamed over the target with
``os.replace`` (atomic on POSIX and Windows). An error mid-save leaves the previous checkpoint as it was and removes the
temporary file, so a reader sees either the old complete file or the new complete one. A kill
mid-save (no cleanup can run then) leaves the temporary file, and the next save removes it.

Loading checks before it returns anything: a truncated or corrupt file, a missing entry, a
parameter whose shape or dtype differs from a template, or a config that differs from the
expected one raises ValueError naming the file and the entry. Loading never modifies anything;
it returns new dicts. It reads the zip file itself (not ``np.load``) so that it can check each
member before it allocates anything for it: a member must be a stored (uncompressed) ``.npy``,
its header's dtype a plain number (or a string, for the texts) and its shape, times the item
size, exactly the bytes the member stores; the members' stored bytes together cannot exceed the
file's size (overlapping members would be read twice). A hostile file can therefore not make
``load`` allocate more than its own size (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import zipfile
from typing import NamedTuple

import numpy as np

from gla_np._files import open_regular, parse_json
from gla_np._files import write_atomic  # also checkpoint.write_atomic: train writes its CSV with it

FORMAT = "gla_np-checkpoint-1"
MAX_TEXT_BYTES = 2 ** 28  # a text entry (config, extra) as stored: 4 bytes a character


class Checkpoint(NamedTuple):
    """What ``load`` returns."""

    config: dict  # the run configuration, as saved
    params: dict  # name -> array
    opt_state: dict  # key -> array (empty when none was saved)
    step: int  # training steps taken
    extra: dict  # anything else saved with the run


def _as_config_dict(config):
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict or a dataclass instance, got "
                         f"{type(config).__name__}")
    try:
        return json.loads(json.dumps(config, sort_keys=True))  # plain JSON types from here on
    except TypeError as err:
        raise ValueError(f"config: expected JSON-serialisable values ({err})") from None


def _pack_arrays(prefix, arrays):
    if not isinstance(arrays, dict):
        raise ValueError(f"{prefix}: expected a dict of name -> array, got "
                         f"{type(arrays).__name__}")
    packed = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.hasobject:
            raise ValueError(f"{prefix}[{name!r}]: expected a numeric array, got dtype object")
        packed[f"{prefix}/{name}"] = value
    return packed


def _write_arrays(file, arrays):
    """Write ``arrays`` as an uncompressed .npz into an open binary file."""
    np.savez(file, **arrays)


def save(path, *, config, params, opt_state=None, step=0, extra=None,
         guard=contextlib.nullcontext):
    """Write a checkpoint to ``path`` atomically (see the module docstring for the layout).

    config: dict or dataclass (stored as JSON).  params, opt_state: dicts of arrays.
    step: training steps taken.  extra: JSON-serialisable dict.
    guard: a context manager the arrays are written in. The training command's holds back
        its signals there (a signal's exception raised inside ``np.savez`` could leave the zip
        file half-open, so that closing it raised another error in its place); the signal is
        acted on as the guard ends, and its exception then abandons the save.
    """
    path = os.fspath(path)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"extra: expected JSON-serialisable values ({err})") from None
    if 4 * len(extra_json) > MAX_TEXT_BYTES:  # load() would refuse it
        raise ValueError(f"extra: {len(extra_json):,} characters of JSON, more than a "
                         f"checkpoint holds ({MAX_TEXT_BYTES // 4:,})")
    arrays = {
        "format": np.array(FORMAT),
        "config": np.array(json.dumps(_as_config_dict(config), sort_keys=True)),
        "step": np.array(int(step), dtype=np.int64),
        "extra": np.array(extra_json),
        **_pack_arrays("param", params),
        **_pack_arrays("opt", opt_state or {}),
    }

    def write(f):
        with guard():
            _write_arrays(f, arrays)

    write_atomic(path, write)


def _members(path, f):
    """``{entry: ZipInfo}`` of the open .npz ``f``, each member checked to be what ``save``
    writes: an uncompressed ``<entry>.npy`` whose stored size fits in the file."""
    size = os.fstat(f.fileno()).st_size
    try:
        z = zipfile.ZipFile(f)
    except zipfile.BadZipFile:
        raise ValueError(f"checkpoint {path}: not a checkpoint (not a .npz zip file), or "
                         f"truncated or corrupt") from None
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: truncated or corrupt, cannot be read "
                         f"({type(err).__name__}: {err})") from None
    members, stored = {}, 0
    for info in z.infolist():
        where = f"checkpoint {path}: member {info.filename!r}"
        if not info.filename.endswith(".npy") or info.filename == ".npy":
            raise ValueError(f"{where} is not an array (.npy); not a checkpoint")
        if info.compress_type != zipfile.ZIP_STORED:
            # save() stores every member as is: a compressed one could inflate to any size
            raise ValueError(f"{where} is compressed; checkpoints store their arrays "
                             f"uncompressed")
        if info.file_size != info.compress_size or info.compress_size > size:
            raise ValueError(f"{where} claims {info.file_size:,} bytes, but the file has "
                             f"{size:,}; truncated or corrupt")
        if info.filename[:-4] in members:
            raise ValueError(f"{where} appears twice")
        stored += info.compress_size
        if stored > size:  # members that overlap, each read whole: a zip bomb without deflate
            raise ValueError(f"checkpoint {path}: its members claim more bytes than the file's "
                             f"{size:,}; corrupt, or members that overlap")
        members[info.filename[:-4]] = info
    return z, members


def _npy_header(path, z, info, like=None, max_bytes=None):
    """``(shape, dtype, fortran_order, data_start)`` of a member, read from its .npy header
    and checked against the template ``like`` (if given) and the member's stored size, before
    any of its data is read."""
    where = f"checkpoint {path}: entry {info.filename[:-4]!r}"
    try:
        with z.open(info) as m:
            version = np.lib.format.read_magic(m)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"unknown .npy version {version}")
            shape, fortran, dtype = read(m)
            start = m.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as err:
        raise ValueError(f"{where}: not a readable .npy header ({err})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biufU":
        raise ValueError(f"{where}: dtype {dtype} is not a plain number or string type")
    if like is not None:
        want = tuple(np.shape(like)), np.asarray(like).dtype
        if (shape, dtype) != want:
            raise ValueError(f"{where} has shape {shape} and dtype {dtype}, expected {want[0]} "
                             f"and {want[1]}")
    nbytes = math.prod(shape) * dtype.itemsize
    if max_bytes is not None and nbytes > max_bytes:
        raise ValueError(f"{where} holds {nbytes:,} bytes, more than the {max_bytes:,} a "
                         f"checkpoint's text may hold")
    if start + nbytes != info.file_size:
        raise ValueError(f"{where}: its header claims shape {shape} of {dtype} "
                         f"({nbytes:,} bytes), but it stores {info.file_size - start:,}; "
                         f"truncated or corrupt")
    return shape, dtype, fortran, start


def _read_member(path, z, info, header):
    """The array of a member whose header ``_npy_header`` checked (the zip's CRC too)."""
    shape, dtype, fortran, start = header
    flat = np.empty(math.prod(shape), dtype=dtype)
    view = memoryview(flat.view(np.uint8)) if flat.size else memoryview(b"")
    try:
        with z.open(info) as m:
            m.read(start)
            done = 0
            while done < len(view):
                got = m.readinto(view[done:])
                if not got:
                    raise EOFError("the member ends early")
                done += got
            m.read(1)  # reaching the end checks the CRC
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"checkpoint {path}: truncated or corrupt, entry "
                         f"{info.filename[:-4]!r} cannot be read ({err})") from None
    return flat.reshape(shape, order="F" if fortran else "C")


def _text(path, z, members, key):
    """A 0-d string entry (format, config, extra), its size checked before it is read."""
    if key not in members:
        raise ValueError(f"checkpoint {path}: missing entry {key!r}")
    header = _npy_header(path, z, members[key], max_bytes=MAX_TEXT_BYTES)
    shape, dtype = header[:2]
    if shape != () or dtype.kind != "U":
        raise ValueError(f"checkpoint {path}: entry {key!r} should be a 0-d string, got "
                         f"{dtype} of shape {shape}")
    return str(_read_member(path, z, members[key], header))


def _arrays(path, z, members, prefix, like):
    """The arrays under ``prefix/``, each checked (names, shapes and dtypes against ``like``
    when given) from its header before any is read."""
    found = {key[len(prefix) + 1:]: info for key, info in members.items()
             if key.startswith(prefix + "/")}
    if like is not None:
        missing = [name for name in like if name not in found]
        if missing:
            raise ValueError(f"checkpoint {path}: missing entry '{prefix}/{missing[0]}'")
        unexpected = sorted(set(found) - set(like))
        if unexpected:
            raise ValueError(f"checkpoint {path}: unexpected entries "
                             f"{[prefix + '/' + n for n in unexpected]}")
    headers = {}
    for name, info in found.items():
        headers[name] = header = _npy_header(path, z, info, None if like is None else like[name])
        if header[1].kind == "U":
            raise ValueError(f"checkpoint {path}: entry '{prefix}/{name}' holds strings, "
                             f"expected numbers")
    return {name: _read_member(path, z, found[name], headers[name]) for name in found}


def load(path, *, config=None, params_like=None, opt_state_like=None, arrays=True):
    """Read and check a checkpoint written by ``save``; returns a ``Checkpoint``.

    config: if given (dict or dataclass), the stored config must equal it; a difference raises
        ValueError naming the differing fields.
    params_like, opt_state_like: if given, dicts of arrays (say, freshly initialised ones); the
        stored entries must have exactly their names, shapes and dtypes.
    arrays: False reads only the config, the step and the extra (params and opt_state come
        back empty), so nothing large is allocated before the config has been checked.

    Every member's .npy header is checked before its data is read: its dtype (numbers; strings
    for the three texts), its shape against the template and its byte count against the bytes
    the member stores, so a header that claims more than the file holds costs no memory. Only
    ``path`` being a regular file is accepted (a FIFO is refused, not waited on).
    """
    path = os.fspath(path)
    with open_regular(path, f"checkpoint {path}") as f:
        z, members = _members(path, f)
        with z:
            fmt = _text(path, z, members, "format")
            if fmt != FORMAT:
                raise ValueError(f"checkpoint {path}: entry 'format' is {fmt!r}, expected "
                                 f"{FORMAT!r}")
            stored = parse_json(_text(path, z, members, "config"), f"checkpoint {path}: config")
            extra = parse_json(_text(path, z, members, "extra"), f"checkpoint {path}: extra")
            for key, value in (("config", stored), ("extra", extra)):
                if not isinstance(value, dict):
                    raise ValueError(f"checkpoint {path}: entry {key!r} should hold a JSON "
                                     f"object, got {type(value).__name__}")
            header = _npy_header(path, z, members["step"]) if "step" in members else None
            if header is None or header[0] != () or header[1].kind != "i":
                raise ValueError(f"checkpoint {path}: missing or malformed entry 'step'")
            step = int(_read_member(path, z, members["step"], header))
            if config is not None:
                expected = _as_config_dict(config)
                differ = sorted(k for k in set(expected) | set(stored)
                                if expected.get(k) != stored.get(k))
                if differ:
                    detail = ", ".join(f"{k}: saved {stored.get(k)!r}, expected "
                                       f"{expected.get(k)!r}" for k in differ)
                    raise ValueError(f"checkpoint {path}: config mismatch ({detail})")
            unknown = sorted(k for k in members if k not in ("format", "config", "step", "extra")
                             and not k.startswith(("param/", "opt/")))
            if unknown:
                raise ValueError(f"checkpoint {path}: unexpected entries {unknown}")
            params = opt_state = {}
            if arrays:
                params = _arrays(path, z, members, "param", params_like)
                opt_state = _arrays(path, z, members, "opt", opt_state_like)
    return Checkpoint(stored, params, opt_state, step, extra)
