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
it returns new dicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import NamedTuple

import numpy as np

from gla_np._files import write_atomic  # also checkpoint.write_atomic: train writes its CSV with it

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
