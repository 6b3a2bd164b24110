"""Generating one token: the state against re-running the chunked form, and the state's memory
against a softmax-attention KV cache (run by hand, not by pytest).

    python3 benchmarks/generate.py                        # prefixes 64 .. 8192 (about a minute)
    python3 benchmarks/generate.py --csv docs/figures/data/generation.csv   # the docs' figure
    python3 benchmarks/generate.py --prefixes 64 256 --steps 5 --repeats 1  # quick

For each prefix length T, the time to produce the logits of the next token, batch 1, float32:

- ``state``: ``lm.step`` on the state left by the T tokens before (``lm.prefill`` made it; the
  prefill itself is not timed). What ``python -m gla_np.sample`` does per character.
- ``re-run``: ``lm.forward`` over all T + 1 tokens with the chunked form, the head at the last
  position only: what a generator that keeps nothing between tokens must do for each new one.

Time is the median (``--stat min``: the fastest, steadier on a shared machine) over
``--repeats`` rounds (``--steps`` tokens per round for ``state``, one
forward per round for ``re-run``). Memory, per sequence: ``state`` is the bytes of the arrays
``lm.step`` carries (per layer the (H, K, V) matrices and the convolutions' last W - 1 inputs);
``KV cache`` is what a softmax-attention model with the same layers and the same key and value
widths (H K and H V) would keep, layers x T x (H K + H V) x 4 bytes in float32. The
``peak`` columns are tracemalloc's peak during one token, each way (NumPy's allocations). The
model is the default text run's (``python -m gla_np.train --task text``): width 64, one layer,
one head of K = V = 64, short convolutions, 100 tokens; ``--hidden`` and the others change it.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout
sys.path.insert(0, str(HERE))

from gla_np.layers import gla_layer  # noqa: E402
from gla_np.layers.model import GLAConfig  # noqa: E402
from gla_np.training import lm  # noqa: E402
from train_step import machine_summary  # noqa: E402

PREFIXES = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
FIELDS = ("prefix", "state_ms", "rerun_ms", "state_bytes", "kv_cache_bytes", "state_peak_bytes",
          "rerun_peak_bytes")


def make_model(args):
    config = GLAConfig(embed_dim=args.hidden, hidden_size=args.hidden, num_layers=args.layers,
                       num_heads=args.heads, head_dim=args.head_dim, expand_factor=2,
                       dropout=0.0, form="chunk", use_short_conv=True, dtype="float32")
    return config, lm.init_params(config, args.vocab, np.random.default_rng(0))


def _state_bytes(state):
    return sum(layer.S.nbytes + sum(c.nbytes for c in layer.conv) for layer in state)


def _rerun(params, ids, config):
    last = np.zeros(ids.shape, dtype=bool)
    last[:, -1] = True
    return lm.forward(params, ids, config, positions=last)[0]  # (1, vocab)


def _peak(fn):
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


STAT = {"median": np.median, "min": np.min}


def measure(config, params, T, steps, repeats, rng, stat=np.median):
    """One row of the table for prefix length T (see the module docstring)."""
    vocab = params[lm.EMBEDDING].shape[0]
    ids = rng.integers(0, vocab, size=(1, T + steps + 1))
    logits, state = lm.prefill(params, ids[:, :T], config)
    step_times = []
    for _ in range(repeats):
        s = state
        t0 = time.perf_counter()
        for i in range(steps):
            logits, s = lm.step(params, ids[:, T + i], s, config)
        step_times.append((time.perf_counter() - t0) / steps)
    rerun_times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _rerun(params, ids[:, :T + 1], config)
        rerun_times.append(time.perf_counter() - t0)
    H, K, V = gla_layer.head_sizes(config)
    kv = config.num_layers * T * (H * K + H * V) * np.dtype(config.dtype).itemsize  # keys, values
    state_peak = _peak(lambda: lm.step(params, ids[:, T], state, config))
    rerun_peak = _peak(lambda: _rerun(params, ids[:, :T + 1], config))
    return {"prefix": T, "state_ms": 1e3 * float(stat(step_times)),
            "rerun_ms": 1e3 * float(stat(rerun_times)), "state_bytes": _state_bytes(state),
            "kv_cache_bytes": kv, "state_peak_bytes": state_peak,
            "rerun_peak_bytes": rerun_peak}


def _kib(n):
    return f"{n / 1024:,.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prefixes", type=int, nargs="+", default=list(PREFIXES))
    p.add_argument("--steps", type=int, default=50, help="state: tokens timed per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds; --stat of them is shown")
    p.add_argument("--stat", default="median", choices=sorted(STAT))
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=100)
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = p.parse_args(argv)
    config, params = make_model(args)
    for line in machine_summary():
        print(line)
    print(f"model: hidden {args.hidden}, {args.layers} layer(s), {args.heads} head(s) of "
          f"K = V = {args.head_dim}, short convolutions, vocabulary {args.vocab}, float32, "
          f"batch 1; {args.stat} of {args.repeats} rounds")
    print(f"{'prefix':>7} {'state ms':>9} {'re-run ms':>10} {'ratio':>7} {'state KiB':>10} "
          f"{'KV cache KiB':>13} {'state peak KiB':>15} {'re-run peak KiB':>16}")
    rng = np.random.default_rng(0)
    rows = []
    for T in args.prefixes:
        r = measure(config, params, T, args.steps, args.repeats, rng, STAT[args.stat])
        rows.append(r)
        print(f"{T:>7} {r['state_ms']:>9.3f} {r['rerun_ms']:>10.2f} "
              f"{r['rerun_ms'] / r['state_ms']:>7.1f} {_kib(r['state_bytes']):>10} "
              f"{_kib(r['kv_cache_bytes']):>13} {_kib(r['state_peak_bytes']):>15} "
              f"{_kib(r['rerun_peak_bytes']):>16}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v)
                                 for k, v in r.items()})
        print(f"wrote {args.csv}")
    return rows


if __name__ == "__main__":
    main()
