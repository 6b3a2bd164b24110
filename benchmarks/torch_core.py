"""Time of the chunk form alone in PyTorch eager, beside benchmarks/core.py.

    /tmp/torchvenv/bin/python benchmarks/torch_core.py                 # naive form, 1 thread
    /tmp/torchvenv/bin/python benchmarks/torch_core.py --form stable --gates init strong
    /tmp/torchvenv/bin/python benchmarks/torch_core.py --check         # same numbers? (float64)

PyTorch is not a dependency of gla_np: run this from a separate venv (benchmarks/torch_step.py
says how to make one). The core is torch_step.py's ``chunk_gla`` (``--form naive``: one masked
matmul per chunk through the chunk's start, PyTorch's fastest form on a CPU and unstable at
strong gates; ``--form stable``: sub-chunks of 16, every exponent <= 0), forward and then
autograd's backward with the same upstream gradient as core.py, on core.py's inputs (the same
arrays: ``core.make_inputs``), float32, chunks of 64, ``torch.set_num_threads(--threads)``.
Like core.py's, the core computes no final state (``chunk_gla`` returns o alone).

``--check`` compares, in float64 at T = 256, the output and the gradients of q, k, v and g with
gla_np's chunk form and exits with status 1 if a relative error is above 1e-8 (the naive form
at the ``strong`` gates fails this: that is its instability).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from core import CHUNK, GATES, SHAPE, make_inputs, time_calls  # noqa: E402  (this folder)
from gla_np import chunked, data_parallel  # noqa: E402
from torch_step import FORMS, MALLOC_ENV, chunk_gla, machine_summary, relative_error  # noqa: E402


def torch_core(q, k, v, g, do, form):
    """Forward and backward of torch_step.chunk_gla: the gradients of q, k, v, g."""
    for x in (q, k, v, g):
        x.grad = None
    o = chunk_gla(q, k, v, g, q.shape[-1] ** -0.5, CHUNK, form)
    o.backward(do)
    return o, q.grad, k.grad, v.grad, g.grad


def check(form, gates):
    """Relative errors of torch's output and gradients against gla_np's, float64, T = 256."""
    arrays = make_inputs(gates, **{**SHAPE, "B": 2, "T": 256}, dtype="float64")
    q, k, v, g, do = arrays
    o, _, cache = chunked.forward(q, k, v, g, chunk_size=CHUNK)
    ours = (o, *chunked.backward(do, None, cache)[:4])
    tensors = [torch.from_numpy(x).requires_grad_(i < 4) for i, x in enumerate(arrays)]
    theirs = [t.detach().numpy() for t in torch_core(*tensors, form)]
    errors = [relative_error(a, b) for a, b in zip(theirs, ours)]
    print(f"{form} form, {gates} gates, float64: relative errors of o, dq, dk, dv, dg: "
          + ", ".join(f"{e:.1e}" for e in errors))
    return max(errors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--form", choices=FORMS, default="naive")
    parser.add_argument("--gates", nargs="+", choices=GATES, default=["init"])
    parser.add_argument("--T", type=int, default=SHAPE["T"])
    parser.add_argument("--B", type=int, default=SHAPE["B"])
    parser.add_argument("--H", type=int, default=SHAPE["H"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--check", action="store_true",
                        help="compare with gla_np in float64 instead of timing")
    args = parser.parse_args(argv)
    env = data_parallel.process_environment(os.environ, MALLOC_ENV)
    if env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    torch.set_num_interop_threads(1)
    if args.check:
        worst = max(check(args.form, gates) for gates in args.gates)
        sys.exit(1 if worst > 1e-8 else 0)
    shape = {**SHAPE, "T": args.T, "B": args.B, "H": args.H}
    print(machine_summary())
    print(f"\nchunk form ({args.form}) forward + backward, {shape}, chunk {CHUNK}, float32\n")
    print(f"{'gates':<7} {'threads':>7} {'min ms':>8} {'median ms':>10} {'CPU ms':>8}")
    for gates in args.gates:
        q, k, v, g, do = (torch.from_numpy(x) for x in make_inputs(gates, **shape))
        for x in (q, k, v, g):
            x.requires_grad_()
        for n in args.threads:
            torch.set_num_threads(n)
            wall, cpu = time_calls(lambda: torch_core(q, k, v, g, do, args.form), args.repeats)
            print(f"{gates:<7} {n:>7} {1e3 * wall.min():>8.1f} {1e3 * np.median(wall):>10.1f} "
                  f"{1e3 * np.median(cpu):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
