"""Golden cases for testing a GLA kernel in any language: ``python -m gla_np.golden``.

    python -m gla_np.golden --out cases.npz [--layout BTHK] [--dtype float32] [--chunk-size 64]

writes one .npz file (readable from C++ with cnpy, from JAX/PyTorch through NumPy) holding named
cases. Case ``name`` has the arrays ``name/q``, ``name/k``, ``name/v``, ``name/g`` (and, when the
case uses them, ``name/initial_state``, ``name/do``, ``name/d_final_state``,
``name/cu_seqlens``) in the requested dtype and layout (bfloat16 as float32 values that
bfloat16 holds exactly), ``name/scale``, and for every tensor X
the kernel should produce (o, final_state, dq, dk, dv, dg, d_initial_state) the float64
reference ``name/X`` and its per-entry tolerance ``name/bound_X``: a kernel passes the case when
``|X_kernel - X| <= bound_X`` at every entry. ``name/about`` says what the case is for, and
``cases`` lists the names. The bounds come from the error model of gla_np.testing for the
storage dtype and the kernel's chunk size (docs/testing-your-kernel.md).

The cases are chosen so that each of four classic kernel bugs is caught by at least one of them
(the decay applied after the write, dg without the final-state term, the naive exp(cumsum)
factoring, the scale put on k in the backward); the table is in docs/testing-your-kernel.md.
Cases marked optional use features not every kernel has (hard resets, packed sequences).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

import numpy as np

from gla_np._checks import check_choice, check_positive_int
from gla_np._files import write_atomic
from gla_np.testing import LAYOUTS, NAMES, reference, tolerance

DTYPES = ("float32", "float64", "float16", "bfloat16")


def _round_to_bfloat16(x):
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
    return _round_to_bfloat16(x) if dtype == "bfloat16" else x.astype(dtype)


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


CASES = [
    Case("zero_gates", "g = 0 (no decay at all), initial state and final-state gradient on: "
         "the scale bug, the missing final-state term", 1, 2, 37, 4, 3, "zero", True, True, True),
    Case("mild_gates", "g about -1e-3 per step, T = 37 (no chunk size divides it): the decay "
         "applied after the write (an RMS check misses it here)", 2, 1, 37, 4, 3, "mild",
         False, True, False),
    Case("moderate_gates", "g in [-1, 0], T = 70 (one chunk of 64 and a ragged one), every "
         "input and upstream gradient on", 1, 2, 70, 8, 4, "moderate", True, True, True),
    Case("strong_gates", "g in [-30, -5] per step, T = 67: a chunk of 16 already spans a log "
         "decay past float32's exp range, so the naive exp(cumsum) factoring overflows",
         1, 2, 67, 4, 4, "strong", True, True, False),
    Case("k1_v1", "K = V = 1 (scale 1, single-entry sums that cancel)", 2, 1, 33, 1, 1,
         "moderate", True, True, True),
    Case("final_state_gradient_only", "no do, only a gradient on the final state: every "
         "gradient flows through S_T", 1, 2, 17, 4, 3, "moderate", True, False, True),
    Case("no_state_no_final_gradient", "no initial state, no final-state gradient, T = 129 "
         "(2 * 64 + 1)", 1, 1, 129, 4, 4, "moderate", False, True, False),
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


def make_case(case, *, layout="BHTK", dtype="float32", chunk_size=64, seed=0):
    """The arrays of one case (a dict, keys as in the file without the ``name/`` prefix)."""
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
    cu = np.array(case.cu_seqlens, dtype=np.int64) if case.cu_seqlens else None
    scale = K ** -0.5
    ref = reference(arrays["q"], arrays["k"], arrays["v"], arrays["g"],
                    initial_state=arrays.get("initial_state"), do=arrays.get("do"),
                    d_final_state=arrays.get("d_final_state"), scale=scale, layout=layout,
                    cu_seqlens=cu, chunk_size=chunk_size)
    rtol, atol = tolerance(dtype, ref.log_gate_span)
    for name in NAMES:
        value = getattr(ref, name)
        if value is not None:
            arrays[name] = value
            arrays["bound_" + name] = rtol * getattr(ref.magnitude, name) + atol
    if cu is not None:
        arrays["cu_seqlens"] = cu
    arrays["scale"] = np.float64(scale)
    arrays["rtol"], arrays["atol"] = np.float64(rtol), np.float64(atol)
    arrays["log_gate_span"] = np.float64(ref.log_gate_span)
    arrays["about"] = np.array(("optional: " if case.optional and not
                                case.about.startswith("optional") else "") + case.about)
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
                        help="the kernel's dtype: inputs are stored in it (bfloat16: as "
                             "float32 values that bfloat16 holds exactly), and the bounds use "
                             "its error model")
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
