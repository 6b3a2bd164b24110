"""Checkpoints: one NumPy ``.npz`` file holding everything needed to resume exactly.

Layout of the file (every entry a plain array, so it loads with ``allow_pickle=False``)::

    format        0-d str    "gla_np-checkpoint-1"
    config        0-d str    the run's configuration as JSON (model, task, optimizer, seed, ...)
    step          0-d int64  the number of training steps taken
    extra         0-d str    JSON for anything else worth keeping (say, the metrics so far)
    param/<name>  the parameters, one array per name
    opt/<key>     the optimizer state (see gla_np.optim: "step", "m/<name>", ...)

Saving is atomic (``write_atomic``): the arrays go to a temporary file in the same directory,
which is flushed and fsync'ed and then renamed over the target with ``os.replace`` (atomic on
POSIX and Windows). An error mid-save leaves the previous checkpoint as it was and removes the
temporary file, so a reader sees either the old complete file or the new complete one. A kill
mid-save (no cleanup can run then) leaves the temporary file, and the next save removes it.

Loading checks before it returns anything: a truncated or corrupt file, a missing entry, a
parameter whose shape or dtype differs from a template, or a config that differs from the
expected one raises ValueError naming the file and the entry. Loading never modifies anything;
it returns new dicts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import zipfile
from typing import NamedTuple

import numpy as np

FORMAT = "gla_np-checkpoint-1"


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


def _temp_name(path):
    """A fresh name ``.<file name>.<8 random characters>.tmp`` beside ``path``."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")


def _remove_leftovers(path):
    """Delete temporary files of ``path`` that a killed save left behind (our naming only).

    A kill (SIGKILL, power loss) mid-save runs no cleanup, so its temporary file stays; without
    this, every such kill would leave one more. (The 8 characters also match the names that
    ``tempfile.mkstemp`` gave these files in earlier versions.)
    """
    directory, base = os.path.split(os.path.abspath(path))
    ours = re.compile(re.escape(f".{base}.") + r"[a-z0-9_]{8}\.tmp")
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if ours.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


def write_atomic(path, write):
    """Write a file so that a reader only ever sees the old complete file or the new one.

    ``write(f)`` fills a binary file object: a temporary file beside ``path``, created with the
    mode an ordinary new file gets (0o666 less the umask, so the checkpoint and the CSV of a run
    match). It is flushed and fsync'ed, then renamed over ``path`` (``os.replace``, atomic on
    POSIX and Windows), and the folder is fsync'ed where supported. If ``write`` raises, the
    temporary file is removed and ``path`` is left as it was. Leftovers of earlier killed
    writes of ``path`` are removed first.
    """
    path = os.fspath(path)
    _remove_leftovers(path)
    while True:
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:  # a name drawn twice: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable, where supported
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(path, *, config, params, opt_state=None, step=0, extra=None):
    """Write a checkpoint to ``path`` atomically (see the module docstring for the layout).

    config: dict or dataclass (stored as JSON).  params, opt_state: dicts of arrays.
    step: training steps taken.  extra: JSON-serialisable dict.
    """
    path = os.fspath(path)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"extra: expected JSON-serialisable values ({err})") from None
    arrays = {
        "format": np.array(FORMAT),
        "config": np.array(json.dumps(_as_config_dict(config), sort_keys=True)),
        "step": np.array(int(step), dtype=np.int64),
        "extra": np.array(extra_json),
        **_pack_arrays("param", params),
        **_pack_arrays("opt", opt_state or {}),
    }
    write_atomic(path, lambda f: _write_arrays(f, arrays))


def _read_all(path):
    """Every entry of the .npz at ``path`` as a dict; ValueError if it cannot be read whole."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {key: f[key] for key in f.files}  # reading each entry checks its CRC
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as err:
        raise ValueError(f"checkpoint {path}: truncated or corrupt, cannot be read "
                         f"({type(err).__name__}: {err})") from None


def _text(path, entries, key):
    if key not in entries:
        raise ValueError(f"checkpoint {path}: missing entry {key!r}")
    value = entries[key]
    if value.ndim != 0 or value.dtype.kind != "U":
        raise ValueError(f"checkpoint {path}: entry {key!r} should be a 0-d string, got "
                         f"{value.dtype} of shape {value.shape}")
    return str(value)


def _unpack(path, entries, prefix, like):
    """The arrays under ``prefix/``; checked against the template ``like`` when given."""
    found = {key[len(prefix) + 1:]: value for key, value in entries.items()
             if key.startswith(prefix + "/")}
    if like is None:
        return found
    for name, template in like.items():
        if name not in found:
            raise ValueError(f"checkpoint {path}: missing entry '{prefix}/{name}'")
        template = np.asarray(template)
        if found[name].shape != template.shape or found[name].dtype != template.dtype:
            raise ValueError(f"checkpoint {path}: entry '{prefix}/{name}' has shape "
                             f"{found[name].shape} and dtype {found[name].dtype}, expected "
                             f"{template.shape} and {template.dtype}")
    unexpected = sorted(set(found) - set(like))
    if unexpected:
        raise ValueError(f"checkpoint {path}: unexpected entries "
                         f"{[prefix + '/' + n for n in unexpected]}")
    return found


def load(path, *, config=None, params_like=None, opt_state_like=None):
    """Read and check a checkpoint written by ``save``; returns a ``Checkpoint``.

    config: if given (dict or dataclass), the stored config must equal it; a difference raises
        ValueError naming the differing fields.
    params_like, opt_state_like: if given, dicts of arrays (say, freshly initialised ones); the
        stored entries must have exactly their names, shapes and dtypes.
    """
    path = os.fspath(path)
    entries = _read_all(path)
    fmt = _text(path, entries, "format")
    if fmt != FORMAT:
        raise ValueError(f"checkpoint {path}: entry 'format' is {fmt!r}, expected {FORMAT!r}")
    try:
        stored = json.loads(_text(path, entries, "config"))
        extra = json.loads(_text(path, entries, "extra"))
    except json.JSONDecodeError as err:
        raise ValueError(f"checkpoint {path}: config or extra is not valid JSON ({err})") from None
    for key, value in (("config", stored), ("extra", extra)):
        if not isinstance(value, dict):
            raise ValueError(f"checkpoint {path}: entry {key!r} should hold a JSON object, got "
                             f"{type(value).__name__}")
    if "step" not in entries or entries["step"].shape != () or entries["step"].dtype.kind != "i":
        raise ValueError(f"checkpoint {path}: missing or malformed entry 'step'")
    if config is not None:
        expected = _as_config_dict(config)
        differ = sorted(k for k in set(expected) | set(stored) if expected.get(k) != stored.get(k))
        if differ:
            detail = ", ".join(f"{k}: saved {stored.get(k)!r}, expected {expected.get(k)!r}"
                               for k in differ)
            raise ValueError(f"checkpoint {path}: config mismatch ({detail})")
    params = _unpack(path, entries, "param", params_like)
    opt_state = _unpack(path, entries, "opt", opt_state_like)
    return Checkpoint(stored, params, opt_state, int(entries["step"]), extra)
