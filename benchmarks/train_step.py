"""Time of one training step of the token model (run by hand, not by pytest).

    python3 benchmarks/train_step.py                       # both configs, 1 thread and all cores
    python3 benchmarks/train_step.py --configs small --threads 2 --repeats 30
    python3 benchmarks/train_step.py --profile             # adds where the time goes, by module
    python3 benchmarks/train_step.py --configs small --breakdown   # where a 2-thread step's goes

A step is what ``python -m gla_np.train`` does per batch: forward, loss, backward, clip to a
global norm of 1, AdamW (``gla_np.data_parallel.loss_and_grads`` with ``threads`` shards, then
``optim``). Two configs, both float32, chunk form, MQAR batches of vocabulary 256:

    small  the training command's default model without the short convolution:
           B=64, T=64, D=64, 1 head of 64, 1 layer, FFN x2
    large  B=8, T=512, D=256, 4 heads of 64, 2 layers, FFN x2
    train  (not by default) small with the short convolution: the training command's model

For each config and thread count: min and median ms per step over ``--repeats`` steps (after
two warm-up steps), tokens per second at the median, and the median CPU time of the process
per step (all threads together). The machine may be shared: the min is the better estimate of
the step's own cost, the median of what a run sees; at one thread the CPU time is the least
disturbed by other processes.

``--profile`` runs cProfile on one-thread steps and adds up the time by gla_np module: time
spent in NumPy (a ufunc, a matmul, ``np.where``) counts for the gla_np function that called it.

``--breakdown`` shows where the time of a step on several threads goes (the thread counts of
``--threads`` above 1, default 2), from the same steps the table times:

    step          the whole step, wall time; its parts below add up to it, step by step
      before      from the call to the first shard's start (shard bounds, target counts)
      shards      the shards beside each other, first start to last end
      after       last shard's end to the return: its weighting, the shard sum, the logits
      clip        clip_by_global_norm (serial)
      AdamW       the optimizer's update (serial)
    per shard     its wall time beside the others, its own CPU time (the thread's), the
                  difference (waiting: for the GIL, or for a core), and the wall and CPU
                  time of the shard run alone (the same rows, nothing beside it)
    imbalance     last shard's end minus the first one's
    1 thread      the step on one thread, timed alternating with the others
    one row       a step of the model on one row (``lm.loss_and_grads``), and on two; a
                  shard's fixed cost, mostly Python holding the GIL, is about the step on one
                  row less the cost of that row, estimated as 2 x (one row) - (two rows)

Each row gives the min, the median and the mean over ``--repeats`` steps: the means of the
parts add up to the mean of the step. The shards are timed by wrapping ``lm.loss_and_grads``
where ``data_parallel`` calls it, for the breakdown's steps only.

The process: like ``python -m gla_np.train``, the script starts itself again with
``data_parallel.PROCESS_ENV`` set (one BLAS thread per shard, malloc keeping freed memory);
``--raw`` times the process as started instead, to measure what that setting is worth.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from gla_np import data_parallel, lm, optim, tasks  # noqa: E402
from gla_np.layers.model import GLAConfig  # noqa: E402

CONFIGS = {
    "small": dict(batch=64, seq_len=64, hidden=64, heads=1, head_dim=64, layers=1),
    "large": dict(batch=8, seq_len=512, hidden=256, heads=4, head_dim=64, layers=2),
    "train": dict(batch=64, seq_len=64, hidden=64, heads=1, head_dim=64, layers=1, conv=True),
}
VOCAB = 256


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return cpu


def machine_summary():
    """CPU model, cores, Python, NumPy and BLAS, as printable lines."""
    cpu = cpu_model()
    blas = "unknown"
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{info.get('name')} {info.get('version')}"
    except Exception:  # older NumPy: show_config has no dict mode
        pass
    env = ", ".join(f"{n}={os.environ.get(n)}" for n in data_parallel.PROCESS_ENV)
    return [f"machine: {cpu}, {data_parallel.default_threads()} cores; Python "
            f"{platform.python_version()}, NumPy {np.__version__}, BLAS {blas}; {env}"]


def make_problem(name, seed=0):
    """Config ``name``'s model config, fresh params, and one MQAR batch (ids, targets)."""
    c = CONFIGS[name]
    config = GLAConfig(embed_dim=c["hidden"], hidden_size=c["hidden"], num_layers=c["layers"],
                       num_heads=c["heads"], head_dim=c["head_dim"], expand_factor=2,
                       dropout=0.0, seq_len=c["seq_len"], form="chunk",
                       use_short_conv=c.get("conv", False), dtype="float32")
    rng = np.random.default_rng(seed)
    params = lm.init_params(config, VOCAB, rng)
    ids, targets = tasks.mqar(rng, c["batch"], seq_len=c["seq_len"], num_pairs=8,
                              vocab_size=VOCAB)
    return config, params, ids, targets


def make_step(name, threads, seed=0):
    """A function running one full training step of config ``name``, and the tokens per step.

    ``step(marks)`` appends the times (``time.perf_counter``) after the gradients and after
    the clip to the list ``marks``, if one is given."""
    config, params, ids, targets = make_problem(name, seed)
    opt = optim.AdamW(weight_decay=0.1)
    state = {"params": params, "opt": opt.init(params)}

    def step(marks=None):
        loss, grads, _ = data_parallel.loss_and_grads(state["params"], ids, targets, config,
                                                      threads=threads)
        if marks is not None:
            marks.append(time.perf_counter())
        grads, _ = optim.clip_by_global_norm(grads, 1.0)
        if marks is not None:
            marks.append(time.perf_counter())
        state["params"], state["opt"] = opt.step(state["params"], grads, state["opt"], 1e-3)
        return loss

    return step, ids.size


def time_steps(step, repeats):
    """Per-step wall times and process CPU times (all threads) in seconds, after two warm-ups."""
    step(), step()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return np.array(wall), np.array(cpu)


def _module_of(func):
    """'linear' for a function of gla_np/ops/linear.py, None for anything outside gla_np."""
    filename = func[0].replace(os.sep, "/")
    if "/gla_np/" not in filename:
        return None
    return filename.rsplit("/gla_np/", 1)[1].removesuffix(".py").replace("/", ".")


def time_by_module(stats):
    """Seconds by gla_np module: each function's own time, plus that of the non-gla_np
    functions it called (NumPy's), split among the callers in proportion to their calls' time."""
    raw = stats.stats  # func -> (cc, nc, tt, ct, callers); callers: func -> (cc, nc, tt, ct)
    shares = {}  # func -> {module: fraction of func's time}

    def share(func, depth=0):
        if func in shares:
            return shares[func]
        module = _module_of(func)
        if module is not None:
            result = {module: 1.0}
        elif depth > 20 or func not in raw or not raw[func][4]:
            result = {"(outside gla_np)": 1.0}
        else:
            callers = raw[func][4]
            weight = {c: v[3] for c, v in callers.items()}
            total = sum(weight.values()) or 1.0
            result = {}
            for caller, w in weight.items():
                for m, f in share(caller, depth + 1).items():
                    result[m] = result.get(m, 0.0) + f * (w / total if sum(weight.values())
                                                          else 1.0 / len(weight))
        shares[func] = result
        return result

    seconds = {}
    for func, (_, _, tt, _, _) in raw.items():
        for m, f in share(func).items():
            seconds[m] = seconds.get(m, 0.0) + tt * f
    return seconds


def profile(name, steps):
    """Print the share of one-thread step time by gla_np module for config ``name``."""
    step, _ = make_step(name, threads=1)
    step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    seconds = time_by_module(pstats.Stats(prof))
    total = sum(seconds.values())
    print(f"\nprofile, {name}, 1 thread, {steps} steps ({1e3 * total / steps:.1f} ms/step "
          f"under cProfile): time by module")
    for module, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        if s / total >= 0.005:
            print(f"  {module:<22} {100 * s / total:5.1f}%  {1e3 * s / steps:7.2f} ms")


class TimedShards:
    """Stands in for ``lm`` where ``data_parallel`` calls it: times each ``loss_and_grads``
    call (a shard) in its own thread: wall start and end, and the thread's CPU time."""

    def __init__(self, module, ids):
        self.module, self.ids, self.spans = module, ids, []

    def __getattr__(self, name):
        return getattr(self.module, name)

    def loss_and_grads(self, params, ids, *args, **kwargs):
        start, start_cpu = time.perf_counter(), time.thread_time()
        out = self.module.loss_and_grads(params, ids, *args, **kwargs)
        end, cpu = time.perf_counter(), time.thread_time() - start_cpu
        first_row = (ids.ctypes.data - self.ids.ctypes.data) // self.ids.strides[0]
        self.spans.append((first_row, start, end, cpu))  # list.append: safe across threads
        return out


def breakdown_rows(name, threads, repeats):
    """The rows of ``--breakdown``: (label, seconds per step), one value per timed step."""
    config, params, ids, targets = make_problem(name)
    step, _ = make_step(name, threads)
    one_thread, _ = make_step(name, 1)
    bounds = data_parallel.shard_bounds(ids.shape[0], threads)
    timed = TimedShards(lm, ids)
    rows = {}

    def add(label, seconds):
        rows.setdefault(label, []).append(seconds)

    def alone(rows_slice):
        start, start_cpu = time.perf_counter(), time.thread_time()
        lm.loss_and_grads(params, ids[rows_slice], targets[rows_slice], config)
        return time.perf_counter() - start, time.thread_time() - start_cpu

    data_parallel.lm = timed
    try:
        for warm_up in (True, True, False):
            for _ in range(1 if warm_up else repeats):
                timed.spans.clear()
                marks = [time.perf_counter()]
                step(marks)
                marks.append(time.perf_counter())
                spans = sorted(timed.spans)  # (the one-thread step's call comes next)
                one = time.perf_counter()
                one_thread()
                one = time.perf_counter() - one
                single = [alone(slice(start, stop)) for start, stop in bounds]
                row, rows_2 = alone(slice(0, 1)), alone(slice(0, 2))
                if warm_up:
                    continue
                t0, t1, t2, t3 = marks
                first = min(s for _, s, _, _ in spans)
                last = max(e for _, _, e, _ in spans)
                add(f"{threads}-thread step", t3 - t0)
                add("  before the shards", first - t0)
                add("  the shards beside each other", last - first)
                add("  after: weighting, shard sum, logits", t1 - last)
                add("  clip", t2 - t1)
                add("  AdamW", t3 - t2)
                for i, ((_, s, e, cpu), (wall_alone, cpu_alone)) in enumerate(zip(spans, single)):
                    rows_i = bounds[i][1] - bounds[i][0]
                    add(f"shard {i} ({rows_i} rows) beside: wall", e - s)
                    add(f"shard {i} beside: its CPU", cpu)
                    add(f"shard {i} beside: waiting (wall - CPU)", e - s - cpu)
                    add(f"shard {i} alone: wall", wall_alone)
                    add(f"shard {i} alone: its CPU", cpu_alone)
                add("imbalance (last end - first end)", last - min(e for _, _, e, _ in spans))
                add("1-thread step", one)
                add("one row", row[0])
                add("two rows", rows_2[0])
                add("fixed cost of a shard: 2 x one - two", 2 * row[0] - rows_2[0])
    finally:
        data_parallel.lm = lm
    return rows


def breakdown(name, threads, repeats):
    """Print where the time of a ``threads``-thread step of config ``name`` goes."""
    rows = breakdown_rows(name, threads, repeats)
    print(f"\nbreakdown, {name}, {threads} threads, {repeats} steps: ms per step")
    print(f"{'part':<40} {'min':>8} {'median':>8} {'mean':>8}")
    for label, values in rows.items():
        v = 1e3 * np.array(values)
        print(f"{label:<40} {v.min():>8.2f} {np.median(v):>8.2f} {v.mean():>8.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["small", "large"])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts to time (default: 1 and every core)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per row (default: 40 small and train, 10 large)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one-thread steps and print time by module")
    parser.add_argument("--breakdown", action="store_true",
                        help="only print where the time of a step on 2 or more threads goes")
    parser.add_argument("--raw", action="store_true",
                        help="do not restart with data_parallel.PROCESS_ENV")
    args = parser.parse_args(argv)
    env = data_parallel.process_environment(os.environ)
    if not args.raw and env != dict(os.environ):
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    threads = args.threads or sorted({1, data_parallel.default_threads()})
    for line in machine_summary():
        print(line)
    if args.breakdown:
        for name in args.configs:
            repeats = args.repeats or (10 if name == "large" else 40)
            for n in [n for n in (args.threads or [2]) if n > 1]:
                breakdown(name, n, repeats)
        return
    print(f"\n{'config':<7} {'threads':>7} {'min ms':>8} {'median ms':>10} {'tokens/s':>10} "
          f"{'CPU ms':>8}")
    for name in args.configs:
        repeats = args.repeats or (10 if name == "large" else 40)
        for n in threads:
            step, tokens = make_step(name, n)
            times, cpu = time_steps(step, repeats)
            print(f"{name:<7} {n:>7} {1e3 * times.min():>8.1f} {1e3 * np.median(times):>10.1f} "
                  f"{tokens / np.median(times):>10,.0f} {1e3 * np.median(cpu):>8.1f}", flush=True)
    if args.profile:
        for name in args.configs:
            profile(name, 20 if name == "small" else 4)


if __name__ == "__main__":
    main()
