"""Time of the chunk form alone, forward and backward, beside benchmarks/torch_core.py.

    python3 benchmarks/core.py                           # B=8 H=4 T=2048 K=V=64, float32
    python3 benchmarks/core.py --gates init strong --repeats 20
    python3 benchmarks/core.py --B 64 --H 1 --T 64 --repeats 40  # the small step's shape

The core of a GLA layer: ``chunked.forward`` then ``chunked.backward`` with a random upstream
gradient on the output and none on the final state (no initial state), chunks of 64, float32,
one thread (OpenBLAS on one thread, as in a training step's shard). Timed as the layer runs it,
without the final state (``output_final_state=False``): torch_core.py's core returns no final
state either. Gates:

    init    like a fresh layer's, g = logsigmoid(z) / 16 with z ~ N(0, 1): a chunk of 64 spans
            about 3 in every channel, so each chunk is one masked matmul
            (docs/derivations/recurrence/chunked.md, "Mild blocks: one matmul")
    strong  g = logsigmoid(z) with z ~ N(0, 1) - 2: about -2.2 per step, spans of about 140
            per chunk; the chunk is halved down to blocks whose span is small enough (4 rows)

The inputs are the same as torch_core.py's (``make_inputs``, seed 0). Printed: min and median
ms over ``--repeats`` runs after two warm-ups, and the median CPU time. Like train_step.py, the
script starts itself again with ``data_parallel.PROCESS_ENV`` set.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from gla_np import chunked, data_parallel  # noqa: E402
from gla_np.training.data_parallel import _one_blas_thread  # noqa: E402
from train_step import machine_summary  # noqa: E402  (this script's folder)

GATES = ("init", "strong")
SHAPE = dict(B=8, H=4, T=2048, K=64, V=64)
CHUNK = 64


def make_inputs(gates, B, H, T, K, V, dtype="float32", seed=0):
    """q, k, v, g, do as NumPy arrays of ``dtype``; g by ``gates`` (module docstring)."""
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, B, H, T, K))
    v, do = rng.standard_normal((2, B, H, T, V))
    z = rng.standard_normal((B, H, T, K))
    if gates == "init":
        g = -np.logaddexp(0.0, -z) / 16
    else:
        g = -np.logaddexp(0.0, -(z - 2.0))
    return [x.astype(dtype) for x in (q, k, v, g, do)]


def time_calls(fn, repeats):
    """Wall and CPU seconds of ``fn()`` over ``repeats`` calls, after two warm-ups."""
    fn(), fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return np.array(wall), np.array(cpu)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gates", nargs="+", choices=GATES, default=["init"])
    parser.add_argument("--T", type=int, default=SHAPE["T"])
    parser.add_argument("--B", type=int, default=SHAPE["B"])
    parser.add_argument("--H", type=int, default=SHAPE["H"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    env = data_parallel.process_environment(os.environ)
    if env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    shape = {**SHAPE, "T": args.T, "B": args.B, "H": args.H}
    for line in machine_summary():
        print(line)
    print(f"chunk form forward + backward, {shape}, chunk {CHUNK}, float32, 1 thread\n")
    print(f"{'gates':<7} {'min ms':>8} {'median ms':>10} {'CPU ms':>8}")
    for gates in args.gates:
        q, k, v, g, do = make_inputs(gates, **shape)

        def core():
            o, _, cache = chunked.forward(q, k, v, g, chunk_size=CHUNK, output_final_state=False)
            return chunked.backward(do, None, cache)

        with _one_blas_thread():
            wall, cpu = time_calls(core, args.repeats)
        print(f"{gates:<7} {1e3 * wall.min():>8.1f} {1e3 * np.median(wall):>10.1f} "
              f"{1e3 * np.median(cpu):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
