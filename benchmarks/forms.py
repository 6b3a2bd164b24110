"""Time and memory of the three forms of the gated linear recurrence (run by hand, not by pytest).

    python3 benchmarks/forms.py                         # the full table (a few minutes)
    python3 benchmarks/forms.py --T 2048 --forms chunk --dtypes float32 --repeats 5   # quick
    python3 benchmarks/forms.py --T 256 1024 --dtypes float32 --repeats 5 --stat min  # shared machine

For B=8, H=4, K=V=64 and each T: forward and forward+backward wall time (median of --repeats
runs) and the peak memory of one forward+backward (tracemalloc, which sees NumPy's allocations)
for ``recurrent``, ``parallel`` (only where its (B, H, T, T, K) decay tensor is allowed, see
``parallel.MAX_DECAY_ENTRIES``) and ``chunked``, in float32 and float64. The same run measures
NumPy's float32 1024 x 1024 x 1024 matmul rate and reports the chunked form's rate against it,
counting the forward as 2 T (C K + C V + 2 K V) FLOPs per (batch, head) with C = 64 (intra
scores, intra values, inter read and state write) and forward+backward as three times that.

Memory and system time: the chunked form works on blocks of (batch, head) pairs
(``chunked.BLOCK_ENTRIES``), so its temporaries are per head and stay in cache; what remains of
system time is mostly the whole-batch outputs and inputs, which glibc maps afresh for every
array over 32 MiB. The recurrent and parallel forms have no such blocks.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from gla_np import chunked, parallel, recurrent  # noqa: E402

FORMS = {"recurrent": recurrent, "parallel": parallel, "chunk": chunked}


def machine_summary():
    """Cores, NumPy version, BLAS and the OpenBLAS environment, as printable lines."""
    blas = "unknown"
    try:
        config = np.show_config(mode="dicts")
        info = config["Build Dependencies"]["blas"]
        blas = f"{info.get('name')} {info.get('version')} ({info.get('openblas configuration', '')})"
    except Exception:  # older NumPy: show_config has no dict mode
        pass
    env = {name: os.environ.get(name, "(unset)")
           for name in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    return [f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, NumPy {np.__version__}",
            f"BLAS: {blas}",
            "env: " + ", ".join(f"{k}={v}" for k, v in env.items())]


STAT = {"median": np.median, "min": np.min}
_stat = np.median  # set by main from --stat


def median_time(fn, repeats):
    """Median (or, with --stat min, minimum) wall time of ``fn()`` over ``repeats`` runs, after
    one warm-up run. The minimum is the better estimate on a machine shared with other jobs:
    noise only ever adds time."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(_stat(times))


def matmul_rate(repeats):
    """NumPy's float32 (1024 x 1024) @ (1024 x 1024) rate in GFLOP/s (median)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 1024, 1024), dtype=np.float32)
    seconds = median_time(lambda: a @ b, max(repeats, 10))
    return 2 * 1024 ** 3 / seconds / 1e9


def make_inputs(B, H, T, K, V, dtype, seed=0):
    """Random q, k, v, upstream gradients, and gates like a fresh GLA layer's:
    g = logsigmoid(z) / 16 with z ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, B, H, T, K))
    v, do = rng.standard_normal((2, B, H, T, V))
    z = rng.standard_normal((B, H, T, K))
    g = -np.logaddexp(0.0, -z) / 16
    d_final_state = rng.standard_normal((B, H, K, V))
    return [x.astype(dtype) for x in (q, k, v, g, do, d_final_state)]


def fits(form, B, H, T, K):
    if form == "parallel":
        return B * H * T * T * K <= parallel.MAX_DECAY_ENTRIES
    return True


def run_form(module, inputs, kwargs, repeats):
    """(forward seconds, forward+backward seconds, peak MiB of one forward+backward)."""
    q, k, v, g, do, d_final_state = inputs

    def fwd():
        return module.forward(q, k, v, g, **kwargs)

    def fwd_bwd():
        o, final_state, cache = fwd()
        return module.backward(do, d_final_state, cache)

    t_fwd = median_time(fwd, repeats)
    t_both = median_time(fwd_bwd, repeats)
    tracemalloc.start()
    fwd_bwd()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return t_fwd, t_both, peak / 2 ** 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[256, 1024, 2048, 4096])
    parser.add_argument("--forms", nargs="+", choices=list(FORMS), default=list(FORMS))
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"],
                        default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--B", type=int, default=8)
    parser.add_argument("--H", type=int, default=4)
    parser.add_argument("--K", type=int, default=64)
    parser.add_argument("--V", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--sub-chunk-size", type=int, default=None,
                        help=f"default: chunked.DEFAULT_SUB_CHUNK_SIZE = "
                             f"{chunked.DEFAULT_SUB_CHUNK_SIZE}")
    parser.add_argument("--stat", choices=list(STAT), default="median",
                        help="median (default) or min of the repeats")
    args = parser.parse_args(argv)
    global _stat
    _stat = STAT[args.stat]
    B, H, K, V, C = args.B, args.H, args.K, args.V, args.chunk_size

    for line in machine_summary():
        print(line)
    rate = matmul_rate(args.repeats)
    print(f"float32 1024^3 matmul: {rate:.1f} GFLOP/s ({args.stat})")
    sub = chunked.DEFAULT_SUB_CHUNK_SIZE if args.sub_chunk_size is None else args.sub_chunk_size
    print(f"B={B} H={H} K={K} V={V}, chunk {C}, sub-chunk {sub}, {args.stat} of {args.repeats}\n")
    print(f"{'form':<10} {'dtype':<8} {'T':>5} {'fwd ms':>9} {'fwd+bwd ms':>11} "
          f"{'peak MiB':>9} {'MiB/T':>6}  chunk rate (fwd, fwd+bwd) vs matmul")
    for dtype in args.dtypes:
        for form in args.forms:
            for T in args.T:
                label = f"{form:<10} {dtype:<8} {T:>5}"
                if not fits(form, B, H, T, K):
                    print(f"{label}  skipped: B*H*T*T*K = {B * H * T * T * K:,} decay entries "
                          f"> parallel.MAX_DECAY_ENTRIES = {parallel.MAX_DECAY_ENTRIES:,}")
                    continue
                kwargs = {}
                if form == "chunk":
                    kwargs = {"chunk_size": C, "sub_chunk_size": args.sub_chunk_size}
                inputs = make_inputs(B, H, T, K, V, np.dtype(dtype))
                t_fwd, t_both, peak = run_form(FORMS[form], inputs, kwargs, args.repeats)
                line = (f"{label} {t_fwd * 1e3:>9.1f} {t_both * 1e3:>11.1f} {peak:>9.1f} "
                        f"{peak / T:>6.3f}")
                if form == "chunk":
                    flops = B * H * 2 * T * (C * K + C * V + 2 * K * V)
                    r_fwd, r_both = flops / t_fwd / 1e9, 3 * flops / t_both / 1e9
                    line += (f"  {r_fwd:.1f} / {r_both:.1f} GFLOP/s = "
                             f"{100 * r_fwd / rate:.1f}% / {100 * r_both / rate:.1f}%")
                print(line, flush=True)


if __name__ == "__main__":
    main()
