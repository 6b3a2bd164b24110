"""Time of the training step's matrix products alone, NumPy's BLAS beside PyTorch's.

    python3 benchmarks/gemm.py                                  # NumPy (its BLAS), one thread
    /tmp/torchvenv/bin/python benchmarks/gemm.py --torch        # the same products in PyTorch
    python3 benchmarks/gemm.py --rows 2048 --shapes 64x64 256x512

Every projection of a step is ``linear``: y = x W forward, dx = dy W^T and dW = x^T dy backward,
with x (rows, D_in) and W (D_in, D_out). For each weight shape of the two configs of
benchmarks/train_step.py (``small``: 64x64 for q, k, v, the output gate and the output, 64x16
and 16x64 for the gate's two factors, 64x128 and 128x64 for the FFN; ``large``: 256x256,
256x512, 512x256) this prints the time of the three products on float32 arrays of ``--rows``
rows (4,096: one step's tokens), process time, min of ``--repeats``, and the rate in GFLOP/s.

Both sides run on one thread: NumPy through OpenBLAS set to one thread (the process starts
itself again with ``OPENBLAS_NUM_THREADS=1``, as data_parallel.PROCESS_ENV does), PyTorch with
``torch.set_num_threads(1)``. PyTorch is not a dependency of gla_np: ``--torch`` needs a venv that
has it (benchmarks/torch_step.py says how to make one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

SHAPES = ["64x64", "64x16", "16x64", "64x128", "128x64", "256x256", "256x512", "512x256"]


def best_of(call, repeats):
    """The least process time of ``repeats`` calls, in ms."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        call()
        best = min(best, time.process_time() - start)
    return 1e3 * best


def products(x, W, dy):
    """The three products of one projection, as calls: forward, dx, dW."""
    return (lambda: x @ W), (lambda: dy @ W.T), (lambda: x.T @ dy)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="D_in x D_out")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--torch", action="store_true", help="PyTorch's products instead")
    args = parser.parse_args(argv)
    if not args.torch and os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]],
                  {**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    rng = np.random.default_rng(0)
    if args.torch:
        import torch  # noqa: PLC0415  (only from a venv that has it)

        torch.set_num_threads(1)
        library = f"PyTorch {torch.__version__}"
        convert = torch.from_numpy
    else:
        try:
            info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            blas = f"{info.get('name')} {info.get('version')}"
        except TypeError:  # NumPy before 1.25 prints its config and cannot return it
            blas = "BLAS of unknown name"
        library = f"NumPy {np.__version__}, {blas}"
        convert = np.asarray
    print(f"{library}; one thread; {args.rows} rows, float32; ms (process time, min of "
          f"{args.repeats}) and GFLOP/s")
    print(f"{'shape':<9} {'x W':>7} {'dy W^T':>7} {'x^T dy':>7} {'GFLOP/s':>16}")
    for shape in args.shapes:
        d_in, d_out = (int(n) for n in shape.split("x"))
        x, W, dy = (convert(rng.standard_normal(s).astype(np.float32))
                    for s in ((args.rows, d_in), (d_in, d_out), (args.rows, d_out)))
        ms = [best_of(call, args.repeats) for call in products(x, W, dy)]
        flop = 2 * args.rows * d_in * d_out
        rates = "/".join(f"{flop / (1e6 * t):.0f}" if t > 0 else "-" for t in ms)
        print(f"{shape:<9} {ms[0]:>7.3f} {ms[1]:>7.3f} {ms[2]:>7.3f} {rates:>16}", flush=True)


if __name__ == "__main__":
    main()
