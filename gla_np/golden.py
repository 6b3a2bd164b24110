"""Golden cases for testing a GLA kernel in any language: ``python -m gla_np.golden``.

    python -m gla_np.golden --out cases.npz [--layout BTHK] [--dtype float32|tf32|...]
                            [--chunk-size 64]

writes one .npz file (readable from C++ with cnpy, from JAX/PyTorch through NumPy) holding named
cases. Case ``name`` has the arrays ``name/q``, ``name/k``, ``name/v``, ``name/g`` (and, when the
case uses them, ``name/initial_state``, ``name/do``, ``name/d_final_state``,
``name/cu_seqlens``) in the requested dtype and layout (bfloat16 as float32 values that
bfloat16 holds exactly; tf32 as float32, unrounded), ``name/scale``, and for every tensor X
the kernel should produce (o, final_state, dq, dk, dv, dg, d_initial_state) the float64
reference ``name/X`` and its per-entry tolerance ``name/bound_X``: a kernel passes the case when
``|X_kernel - X| <= bound_X`` at every entry (``name/bound_dg_identity`` for a kernel that
computes dg by the plain gate identity). ``name/about`` says what the case is for,
``name/optional`` (a bool) whether it uses a feature not every kernel has, and ``cases`` lists
the names. The bounds come from the error model of gla_np.testing for the kernel's precision
and chunk size (docs/testing-your-kernel.md). :func:`load_cases` reads such a file back
safely.

The cases are chosen so that each of five classic kernel bugs is caught by at least one of them
(the decay applied after the write, dg without the final-state term, the naive exp(cumsum)
factoring, the scale put on k in the backward, the scale= argument ignored); the table is in
docs/testing-your-kernel.md.
Cases marked optional use features not every kernel has (hard resets, packed sequences).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import zipfile
from typing import NamedTuple

import numpy as np

from gla_np._checks import check_choice, check_positive_int
from gla_np._files import write_atomic
from gla_np.testing import LAYOUTS, NAMES, bound, reference, tolerance
from gla_np.testing.error_model import _span_for

DTYPES = ("float32", "float64", "tf32", "float16", "bfloat16")


def round_to_bfloat16(x):
    """float32 values rounded to the nearest bfloat16 (ties to even), still stored as float32.

    NumPy has no bfloat16; a bfloat16 number is a float32 whose low 16 bits are 0, so the file
    stores those float32 values and a kernel casts them to bfloat16 without loss.
    """
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    # constants as uint64: NumPy 1.x mixes a 0-d uint64 and a Python int into float64
    one, half, shift = np.uint64(1), np.uint64(0x7FFF), np.uint64(16)
    bits = ((bits + half + ((bits >> shift) & one)) >> shift) << shift
    return bits.astype(np.uint32).view(np.float32)


def _stored(x, dtype):
    """x in the file's dtype: bfloat16 values go in as float32 (see _round_to_bfloat16)."""
    if dtype == "bfloat16":
        return round_to_bfloat16(x)
    return x.astype(np.float32 if dtype == "tf32" else dtype)  # tf32 stores float32


class Case(NamedTuple):
    """One golden case: sizes, gates and which optional inputs it uses, and why it is there."""

    name: str
    about: str
    B: int
    H: int
    T: int
    K: int
    V: int
    gates: str  # "zero", "mild", "moderate", "strong", "reset"
    initial_state: bool
    do: bool
    d_final_state: bool
    cu_seqlens: tuple = ()  # packed sequences (B = 1), empty for an ordinary batch
    optional: bool = False
    scale: float | None = None  # None: the default K ** -0.5


def _chunks_of(T, C):
    """How chunks of C cut T rows, in words (the case texts follow --chunk-size)."""
    whole, rest = divmod(T, C)
    if whole == 0:
        return f"shorter than one chunk of {C}"
    if rest == 0:
        return f"{whole} whole chunk{'s' * (whole > 1)} of {C}"
    return f"{whole} chunk{'s' * (whole > 1)} of {C} and a ragged one of {rest}"


CASES = [
    Case("zero_gates", "g = 0 (no decay at all), initial state and final-state gradient on: "
         "the scale bug, the missing final-state term", 1, 2, 37, 4, 3, "zero", True, True, True),
    Case("mild_gates", "g about -1e-3 per step, T = 37 ({chunks}): the decay applied after "
         "the write (an RMS check misses it here)", 2, 1, 37, 4, 3, "mild", False, True, False),
    Case("moderate_gates", "g in [-1, 0], T = 70 ({chunks}), every input and upstream "
         "gradient on", 1, 2, 70, 8, 4, "moderate", True, True, True),
    Case("strong_gates", "g in [-30, -5] per step, T = 67: a chunk of 16 already spans a log "
         "decay past float32's exp range, so the naive exp(cumsum) factoring overflows",
         1, 2, 67, 4, 4, "strong", True, True, False),
    Case("k1_v1", "K = V = 1 (scale 1, single-entry sums that cancel)", 2, 1, 33, 1, 1,
         "moderate", True, True, True),
    Case("final_state_gradient_only", "no do, only a gradient on the final state: every "
         "gradient flows through S_T", 1, 2, 17, 4, 3, "moderate", True, False, True),
    Case("no_state_no_final_gradient", "no initial state, no final-state gradient, T = 129 "
         "({chunks})", 1, 1, 129, 4, 4, "moderate", False, True, False),
    Case("custom_scale", "scale 0.3 instead of K ** -0.5 = 0.5: a kernel that ignores scale=",
         1, 2, 23, 4, 3, "moderate", True, True, True, scale=0.3),
    Case("hard_resets", "optional: log gates of -inf (decay exactly 0) at some steps and "
         "channels", 1, 2, 40, 4, 3, "reset", True, True, True, optional=True),
    Case("packed_sequences", "optional: three sequences packed along T (cu_seqlens, fla's "
         "varlen convention), one state each", 1, 2, 40, 4, 3, "moderate", True, True, True,
         cu_seqlens=(0, 5, 21, 40), optional=True),
]


def _gates(kind, rng, shape):
    if kind == "zero":
        return np.zeros(shape)
    if kind == "mild":
        return -1e-3 * rng.uniform(0.5, 1.0, shape)
    if kind == "moderate":
        return -rng.uniform(0.0, 1.0, shape)
    if kind == "strong":
        return -rng.uniform(5.0, 30.0, shape)
    g = -rng.uniform(0.0, 1.0, shape)  # "reset"
    g[:, :, 7] = -np.inf  # every channel forgets at step 7
    g[:, :, 20:23, 1] = -np.inf  # one channel at steps 20..22
    return g


def case_inputs(case, *, layout="BHTK", dtype="float32", seed=0):
    """A case's inputs as a kernel gets them: q, k, v, g and those of initial_state, do,
    d_final_state the case uses, in ``dtype`` and ``layout``, and the float ``scale``."""
    rng = np.random.default_rng([seed, CASES.index(case)])
    B, H, T, K, V = case.B, case.H, case.T, case.K, case.V
    N = len(case.cu_seqlens) - 1 if case.cu_seqlens else B
    q, k = rng.standard_normal((2, B, H, T, K))
    v = rng.standard_normal((B, H, T, V))
    g = _gates(case.gates, rng, (B, H, T, K))
    S0 = rng.standard_normal((N, H, K, V)) if case.initial_state else None
    do = rng.standard_normal((B, H, T, V)) if case.do else None
    dS_T = rng.standard_normal((N, H, K, V)) if case.d_final_state else None
    arrays = {}
    for name, x in [("q", q), ("k", k), ("v", v), ("g", g), ("do", do)]:
        if x is not None:
            x = _stored(x, dtype)  # what the kernel gets; the reference uses the same values
            arrays[name] = np.ascontiguousarray(np.swapaxes(x, 1, 2) if layout == "BTHK" else x)
    for name, x in [("initial_state", S0), ("d_final_state", dS_T)]:
        if x is not None:
            arrays[name] = _stored(x, dtype)
    arrays["scale"] = K ** -0.5 if case.scale is None else case.scale
    return arrays


def make_case(case, *, layout="BHTK", dtype="float32", chunk_size=64, seed=0):
    """The arrays of one case (a dict, keys as in the file without the ``name/`` prefix)."""
    arrays = case_inputs(case, layout=layout, dtype=dtype, seed=seed)
    cu = np.array(case.cu_seqlens, dtype=np.int64) if case.cu_seqlens else None
    ref = reference(arrays["q"], arrays["k"], arrays["v"], arrays["g"],
                    initial_state=arrays.get("initial_state"), do=arrays.get("do"),
                    d_final_state=arrays.get("d_final_state"), scale=arrays["scale"],
                    layout=layout, cu_seqlens=cu, chunk_size=chunk_size)
    span = _span_for(ref, dtype)  # resets count as the dtype's floor
    rtol, atol = tolerance(dtype, span)
    for name in NAMES:
        value = getattr(ref, name)
        if value is not None:
            arrays[name] = value
            arrays["bound_" + name] = bound(name, ref, dtype=dtype)
    if ref.dg is not None:
        arrays["bound_dg_identity"] = bound("dg", ref, dtype=dtype, dg_identity=True)
    if cu is not None:
        arrays["cu_seqlens"] = cu
    arrays["scale"] = np.float64(arrays["scale"])
    arrays["rtol"], arrays["atol"] = np.float64(rtol), np.float64(atol)
    arrays["log_gate_span"] = np.float64(span)
    arrays["optional"] = np.bool_(case.optional)
    about = case.about.format(chunks=_chunks_of(case.T, chunk_size))
    arrays["about"] = np.array(("optional: " if case.optional and not
                                about.startswith("optional") else "") + about)
    return arrays


def make_cases(*, layout="BHTK", dtype="float32", chunk_size=64):
    """Every case: ``{name: arrays}`` (see :func:`make_case`)."""
    check_choice("layout", layout, LAYOUTS)
    check_choice("dtype", dtype, DTYPES)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    return {c.name: make_case(c, layout=layout, dtype=dtype, chunk_size=chunk_size)
            for c in CASES}


def write_cases(path, *, layout="BHTK", dtype="float32", chunk_size=64):
    """Write every case to ``path`` (.npz) atomically (``gla_np._files.write_atomic``)."""
    cases = make_cases(layout=layout, dtype=dtype, chunk_size=chunk_size)
    flat = {f"{name}/{key}": x for name, arrays in cases.items() for key, x in arrays.items()}
    flat["cases"] = np.array(list(cases))
    flat["layout"], flat["dtype"] = np.array(layout), np.array(dtype)
    flat["chunk_size"] = np.int64(chunk_size)
    write_atomic(path, lambda f: np.savez(f, **flat))
    return list(cases)


MAX_FILE_BYTES = 2 ** 31  # load_cases refuses files whose arrays declare more than this


def _read_member(archive, info, limit):
    """One .npy member of the archive, its header checked before any data is allocated."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"path: {info.filename}: unknown .npy format version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject:
            raise ValueError(f"path: {info.filename} holds Python objects (pickled); a golden "
                             f"file holds numbers and text only")
        declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if declared > limit or declared > info.file_size:
            raise ValueError(f"path: {info.filename} declares shape {shape} of {dtype} "
                             f"({declared} bytes) but the file holds {info.file_size}")
        data = f.read(declared)
        if len(data) != declared:
            raise ValueError(f"path: {info.filename} is cut short ({len(data)} of {declared} "
                             f"bytes)")
    array = np.frombuffer(data, dtype=dtype)
    order = "F" if fortran else "C"
    return array.reshape(shape[::-1]).T if order == "F" else array.reshape(shape), declared


class GoldenFile(NamedTuple):
    """A golden file read back by :func:`load_cases`."""

    cases: dict  # {case name: {key: array}}, keys as in the file without the "name/" prefix
    layout: str
    dtype: str
    chunk_size: int


def load_cases(path, *, max_bytes=MAX_FILE_BYTES):
    """Read a golden file back as a :class:`GoldenFile`. Safe on files from elsewhere: a regular
    file only (no folder, fifo or device), never unpickled, and every array's declared shape and
    size is checked against the file before it is allocated (at most ``max_bytes`` in all)."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ValueError(f"path: cannot read {path} ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"path: {path} is not a regular file")
    flat, total = {}, 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"path: {path} holds {info.filename}, not an .npy array")
                flat[info.filename[:-4]], size = _read_member(archive, info, max_bytes - total)
                total += size
    except zipfile.BadZipFile:
        raise ValueError(f"path: {path} is not an .npz file") from None
    missing = [key for key in ("cases", "layout", "dtype", "chunk_size") if key not in flat]
    if missing:
        raise ValueError(f"path: {path} has no {missing[0]!r}; not a golden file")
    cases = {str(name): {key.split("/", 1)[1]: x for key, x in flat.items()
                         if key.startswith(f"{name}/")} for name in flat["cases"]}
    return GoldenFile(cases, str(flat["layout"]), str(flat["dtype"]), int(flat["chunk_size"]))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m gla_np.golden",
        description="Write golden GLA cases (inputs, float64 outputs and gradients, per-entry "
                    "bounds) to an .npz file for testing a kernel in any language.")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--layout", default="BHTK", choices=LAYOUTS,
                        help="BHTK (gla_np's, head-major) or BTHK (fla's); states are "
                             "(B, H, K, V) in both")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="the kernel's precision: inputs are stored in it (bfloat16: "
                             "as float32 values that bfloat16 holds exactly; tf32: float32 "
                             "inputs with the bounds of matmul inputs rounded to 10 mantissa "
                             "bits), and the bounds use its error model")
    parser.add_argument("--chunk-size", type=int, default=64,
                        help="the kernel's chunk length (sets the log-gate span of the bounds)")
    args = parser.parse_args(argv)
    if args.chunk_size < 1:
        parser.error(f"--chunk-size: expected a positive integer, got {args.chunk_size}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        parser.error(f"--out: the folder {folder} does not exist")
    if os.path.isdir(args.out):
        parser.error(f"--out: {args.out} is a folder; expected a file name")
    names = write_cases(args.out, layout=args.layout, dtype=args.dtype,
                        chunk_size=args.chunk_size)
    print(f"wrote {len(names)} cases to {args.out} ({args.layout}, {args.dtype}): "
          + ", ".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
