"""The oracle's separation margin at long sequences: correct kernels against planted bugs.

    python benchmarks/oracle_margin.py [--T 256 1024 4096 16384] [--dtypes float32 float64]

For each dtype and sequence length T it builds twelve inputs (four kinds of gates: constant
-0.01, uniform in [-0.2, 0], strong uniform in [-30, -5], uniform in [-1, 0] with hard resets;
each with every input and gradient on, with the gradient through the final state only
(do = None), and with do only and no initial state; B = 1, H = 2, K = V = 4, scale 0.3, not
the default) and judges every kernel on every one with gla_np.testing's bound
(docs/testing-your-kernel.md):

* correct kernels: gla_np's recurrent form (a loop over time: chunk_size = 1), its chunked form
  (chunks of 64), its parallel form (chunk_size = T; T <= 1024 only, its memory is T^2), an
  independent chunked kernel (tests/planted_kernels.py, chunks of 64, dg as chunked.md B5) and a
  loop kernel with dg by the plain gate identity (judged with dg_identity=True);
* planted bugs (tests/planted_kernels.py), each on the inputs that can show it (a missing
  final-state term needs a final-state gradient; the naive factoring only overflows at strong
  gates or resets; B5's dg bugs only show at strong gates).

It prints, per dtype and T, the worst |error| / bound of the correct kernels (must stay below 1,
and where it came from) and the smallest worst-tensor ratio of each bug over the inputs that
can show it (must stay above 1): the separation margin. No timing.

    python benchmarks/oracle_margin.py --chains

prints instead, for gla_np's own forms on long chains of constant or mild gates (gradient
through the final state only, an initial state), the worst ratio against the in-chunk part of
the bound alone and against the whole bound: what the step terms are for.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import planted_kernels as pk  # noqa: E402
from gla_np.recurrence import chunked, parallel, recurrent  # noqa: E402
from gla_np.testing import NAMES, bound, reference, tolerance  # noqa: E402

GATES = ("constant -0.01", "uniform [-0.2, 0]", "strong [-30, -5]", "resets, [-1, 0]")
VARIANTS = ("everything on", "final-state gradient only", "do only, no initial state")
SCALE = 0.3


def make_inputs(T, gates, variant, dtype, seed):
    rng = np.random.default_rng(seed)
    B, H, K, V = 1, 2, 4, 4
    q, k = rng.standard_normal((2, B, T, H, K))
    v, do = rng.standard_normal((2, B, T, H, V))
    if gates == "constant -0.01":
        g = np.full((B, T, H, K), -0.01)
    elif gates == "uniform [-0.2, 0]":
        g = -0.2 * rng.uniform(0, 1, (B, T, H, K))
    elif gates == "strong [-30, -5]":
        g = -rng.uniform(5, 30, (B, T, H, K))
    else:
        g = -rng.uniform(0, 1, (B, T, H, K))
        g[:, rng.integers(0, T, max(1, T // 64))] = -np.inf  # every channel forgets there
        g[rng.random(g.shape) < 0.01] = -np.inf  # single channels
    S0, dS_T = rng.standard_normal((2, B, H, K, V))
    if variant == "final-state gradient only":
        do = None
    elif variant == "do only, no initial state":
        S0, dS_T = None, None
    return [None if x is None else x.astype(dtype) for x in (q, k, v, g, S0, do, dS_T)]


def gla_np_form(module, **options):
    def kernel(q, k, v, g, S0, do, dS_T, scale):
        hm = [None if x is None else np.ascontiguousarray(np.swapaxes(x, 1, 2))
              for x in (q, k, v, g, do)]
        o, S_T, cache = module.forward(*hm[:4], scale=scale, initial_state=S0, **options)
        out = dict(o=np.swapaxes(o, 1, 2), final_state=S_T)
        grads = module.backward(hm[4], dS_T, cache)
        out.update(dq=np.swapaxes(grads[0], 1, 2), dk=np.swapaxes(grads[1], 1, 2),
                   dv=np.swapaxes(grads[2], 1, 2), dg=np.swapaxes(grads[3], 1, 2))
        if S0 is not None:
            out["d_initial_state"] = grads[4]
        return out
    return kernel


def correct_kernels(T):
    kernels = {"gla_np recurrent": (gla_np_form(recurrent), 1, False),
               "gla_np chunked": (gla_np_form(chunked, chunk_size=64), 64, False),
               "independent chunked": (pk.as_kernel(*pk.chunked_kernel(64)), 64, False),
               "loop, plain identity": (pk.stable_recurrent, 1, True)}
    if T <= 1024:
        kernels["gla_np parallel"] = (gla_np_form(parallel), T, False)
    return kernels


def bugs():
    """name -> (kernel, chunk size, dg_identity, can it show on these inputs?)"""
    def strong(gates, variant):
        return gates.startswith("strong")

    return {
        "decay after the write": (pk.decay_after_write, 1, True, lambda g, v: True),
        "dg without the final-state term": (pk.dg_without_final_state, 1, True,
                                            lambda g, v: v != "do only, no initial state"),
        "naive factoring": (pk.naive_factoring, 64, False,
                            lambda g, v: g.startswith(("strong", "resets"))),
        "scale on k in the backward": (pk.scale_on_k, 1, True,
                                       lambda g, v: v != "do only, no initial state"),
        "ignores scale=": (pk.ignores_scale, 1, True, lambda g, v: True),
        "B5 port, dg by the plain identity": (
            pk.as_kernel(*pk.chunked_kernel(64, bug="plain_identity")), 64, False,
            lambda g, v: strong(g, v) and v != "final-state gradient only"),
        "B5 port, exclusive sum by subtraction": (
            pk.as_kernel(*pk.chunked_kernel(64, bug="exclusive_by_subtraction")), 64, False,
            lambda g, v: strong(g, v) and v != "do only, no initial state"),
    }


def worst_ratio(kernel, inputs, ref, dtype, dg_identity):
    """The largest |error| / bound over the tensors the kernel returns, and which tensor."""
    out = kernel(*inputs, inputs[0].dtype.type(SCALE))
    worst, where = 0.0, ""
    for name in NAMES:
        if name in out and getattr(ref, name) is not None:
            err = np.abs(np.asarray(out[name], np.float64) - getattr(ref, name))
            err = np.where(np.isfinite(err), err, np.inf)
            ratio = float((err / bound(name, ref, dtype=dtype, dg_identity=dg_identity)).max())
            if ratio > worst:
                worst, where = ratio, name
    return worst, where


CHAINS = [("chunked", "float64", "constant", -0.1, 257),
          ("chunked", "float64", "constant", -0.01, 2048),
          ("chunked", "float64", "constant", -0.01, 8192),
          ("chunked", "float32", "constant", -0.01, 2048),
          ("recurrent", "float32", "constant", -0.01, 2048),
          ("recurrent", "float32", "constant", -0.01, 8192),
          ("chunked", "float64", "uniform in [-0.2, 0]", -0.2, 2048)]


def chains():
    print("| form | dtype | gates | T | in-chunk part alone | whole bound |")
    print("|---|---|---|---|---|---|")
    for form, dtype, kind, gate, T in CHAINS:
        rng = np.random.default_rng(T)
        q, k = rng.standard_normal((2, 1, 2, T, 4)).astype(dtype)
        v = rng.standard_normal((1, 2, T, 4)).astype(dtype)
        g = (np.full(q.shape, gate) if kind == "constant"
             else gate * rng.uniform(0, 1, q.shape)).astype(dtype)
        S0, dS_T = rng.standard_normal((2, 1, 2, 4, 4)).astype(dtype)
        module, C, options = ((chunked, 64, dict(chunk_size=64)) if form == "chunked"
                              else (recurrent, 1, {}))
        o, S_T, cache = module.forward(q, k, v, g, initial_state=S0, **options)
        got = [o, S_T, *module.backward(None, dS_T, cache)]
        ref = reference(q, k, v, g, initial_state=S0, d_final_state=dS_T, chunk_size=C)
        rtol, atol = tolerance(dtype, ref.log_gate_span)
        alone = max(float((np.abs(x - getattr(ref, n))
                           / (rtol * getattr(ref.magnitude, n) + atol)).max())
                    for n, x in zip(NAMES, got))
        whole = max(float((np.abs(x - getattr(ref, n)) / bound(n, ref, dtype=dtype)).max())
                    for n, x in zip(NAMES, got))
        gates = f"constant {gate:g}" if kind == "constant" else kind
        print(f"| gla_np {form} | {dtype} | {gates} | {T} | {alone:.3g} | "
              f"{whole:.3g} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"],
                        choices=["float32", "float64"])
    parser.add_argument("--chains", action="store_true",
                        help="the in-chunk part of the bound alone against the whole bound")
    args = parser.parse_args(argv)
    if args.chains:
        return chains()
    print("| dtype | T | correct kernels: worst ratio (where) | " + " | ".join(bugs()) + " |")
    print("|---|---|---|" + "---|" * len(bugs()))
    for dtype in args.dtypes:
        for T in args.T:
            correct = (0.0, "")
            smallest = {name: np.inf for name in bugs()}
            for i, gates in enumerate(GATES):
                for j, variant in enumerate(VARIANTS):
                    inputs = make_inputs(T, gates, variant, dtype, seed=[T, i, j])
                    refs = {}

                    def ref_for(C):
                        if C not in refs:
                            refs[C] = reference(*inputs[:4], initial_state=inputs[4],
                                                do=inputs[5], d_final_state=inputs[6],
                                                scale=SCALE, layout="BTHK", chunk_size=C)
                        return refs[C]

                    for name, (kernel, C, ident) in correct_kernels(T).items():
                        ratio, tensor = worst_ratio(kernel, inputs, ref_for(C), dtype, ident)
                        if ratio > correct[0]:
                            correct = (ratio, f"{name}, {tensor}, {gates}, {variant}")
                    for name, (kernel, C, ident, shows) in bugs().items():
                        if shows(gates, variant):
                            ratio, _ = worst_ratio(kernel, inputs, ref_for(C), dtype, ident)
                            smallest[name] = min(smallest[name], ratio)
            cells = [f"{r:.3g}" if np.isfinite(r) else "inf" for r in smallest.values()]
            print(f"| {dtype} | {T} | {correct[0]:.3g} ({correct[1]}) | " + " | ".join(cells)
                  + " |", flush=True)


if __name__ == "__main__":
    main()
