"""The safetensors file format, read and written with NumPy alone (used by ``gla_np.fla``).

A file is three parts:

    8 bytes        N, the length of the header, unsigned little-endian
    N bytes        a JSON object: {name: {"dtype", "shape", "data_offsets": [begin, end]}},
                   plus an optional "__metadata__" of strings; padded with spaces
    the rest       every tensor's raw little-endian bytes, C order, at [begin, end) of this part

``read`` checks every claim of the header against the file before it reads a byte of data (a
dtype it knows, a size that matches the shape, offsets inside the file, no overlaps, no trailing
bytes), so a truncated file or a lying header is a ValueError naming the file and the tensor.
``write`` lays the tensors out as the reference implementation does (sorted by name, header with
no spaces, padded to a multiple of 8 bytes) and replaces the file atomically.

NumPy has no bfloat16. A bfloat16 is the top 16 bits of a float32, so widening is exact: put the
16 bits in the high half of a uint32 and view it as float32.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from gla_np._files import open_regular, parse_json, write_atomic

DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
          "BF16": np.dtype("<u2")}  # BF16 is read as its bits, then widened to float32
WRITE_DTYPES = {np.dtype("float32"): "F32", np.dtype("float64"): "F64"}
MAX_HEADER = 100_000_000  # bytes of JSON header, the reference implementation's limit


def _no_duplicates(pairs):
    names = [k for k, _ in pairs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"names {dup} appear more than once")
    return dict(pairs)


def read_header(path):
    """The checked header of the file at ``path``: ``({name: (dtype, shape, begin)}, start)``.

    ``begin`` is the tensor's first byte counted from ``start``, the first byte of the data part.
    """
    with open_regular(path, path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated, {size} bytes is shorter than the 8-byte header "
                             f"length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise ValueError(f"{path}: the header claims {n:,} bytes, more than the "
                             f"{MAX_HEADER:,} a safetensors header may have")
        if 8 + n > size:
            raise ValueError(f"{path}: truncated or corrupt, the header claims {n} bytes but the "
                             f"file has {size - 8} after the length")
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: the header is not valid JSON ({err})") from None
    header = parse_json(text, f"{path}: the header", object_pairs_hook=_no_duplicates)
    if not isinstance(header, dict):
        raise ValueError(f"{path}: expected the header to be a JSON object")
    if not isinstance(header.pop("__metadata__", {}), dict):
        raise ValueError(f"{path}: __metadata__ should be a JSON object")
    data_size = size - 8 - n
    entries, spans = {}, []
    for name, entry in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}: expected dtype, shape and data_offsets, got "
                             f"{repr(entry)[:80]}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ValueError(f"{where}: dtype {str(dtype)[:40]!r} is not one of "
                             f"{sorted(DTYPES)}")
        ints = (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                        for v in shape + offsets))
        if not ints or offsets[0] > offsets[1]:
            raise ValueError(f"{where}: bad shape {repr(shape)[:60]} or data_offsets "
                             f"{repr(offsets)[:60]}")
        want = math.prod(shape) * DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != want:
            raise ValueError(f"{where}: the header lies, shape {shape} of {dtype} is {want} "
                             f"bytes but data_offsets {offsets} span {offsets[1] - offsets[0]}")
        if offsets[1] > data_size:
            raise ValueError(f"{where}: truncated file, the tensor ends at byte {offsets[1]} of "
                             f"a data part of {data_size} bytes")
        entries[name] = (dtype, tuple(shape), offsets[0])
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin < end:
            raise ValueError(f"{path}: tensor {name!r} overlaps the tensor before it")
        end = max(end, stop)
    if end != data_size:
        raise ValueError(f"{path}: {data_size - end} bytes after the last tensor (a header "
                         f"that does not describe the whole file)")
    return entries, 8 + n


def read_tensors(path, entries, start, names, dtype):
    """The tensors ``names`` (already checked by ``read_header``) as arrays of ``dtype``."""
    out = {}
    with open_regular(path, path) as f:
        for name in names:
            kind, shape, begin = entries[name]
            f.seek(start + begin)
            count = math.prod(shape)
            raw = np.fromfile(f, dtype=DTYPES[kind], count=count)
            if raw.size != count:
                raise ValueError(f"{path}: tensor {name!r}: truncated while reading")
            if kind == "BF16":  # the 16 bits are the high half of a float32: exact widening
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            out[name] = raw.reshape(shape).astype(dtype)
    return out


def write(path, tensors, metadata=None):
    """Write ``{name: float32 or float64 array}`` to ``path`` atomically (temp file, rename)."""
    header = {"__metadata__": dict(metadata)} if metadata else {}
    offset, blobs = 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        kind = WRITE_DTYPES.get(a.dtype)
        if kind is None:
            raise ValueError(f"tensors[{name!r}]: expected float32 or float64, got {a.dtype}")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": kind, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data part starts on a multiple of 8 bytes

    def write(f):
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)

    write_atomic(path, write)
