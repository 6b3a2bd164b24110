"""Data parallel training steps: the batch cut into shards, one thread per shard.

This is the one place where gla_np uses more than one core for a training step. The math
modules stay single-threaded pure functions; here ``lm.loss_and_grads`` runs on each shard in
its own thread and the shards' losses and gradients are combined exactly. Threads (not
processes) suffice because NumPy releases the GIL inside its ufuncs, reductions and matmuls,
where nearly all of a step's time goes.

How the shards are weighted. The loss is the mean cross-entropy over the n target positions of
the whole batch (positions whose target is ``tasks.IGNORE`` do not count). Cut the batch along
its rows into shards s with n_s target positions each (n = sum_s n_s); each shard's own loss is
the mean over its own targets, loss_s = (1 / n_s) sum_{p in s} nll_p, so

    loss = (1 / n) sum_p nll_p = sum_s (n_s / n) loss_s
    grad = sum_s (n_s / n) grad_s          (the gradient is linear in the per-position terms)

A shard without target positions has loss 0 and gradient 0 (cross_entropy's rule) and weight
0. The weighted sum runs over the shards in order, whatever order the threads finish in, so a
step is deterministic; 1 and N threads agree to rounding (tests/test_data_parallel.py).

Dropout: with ``training=True`` each shard draws its own masks from a generator seeded from
``rng``, so the masks (not the rule above) depend on the number of shards. With one shard the
step is exactly ``lm.loss_and_grads``.

One BLAS thread per shard. The shards already use every core; two shards each asking OpenBLAS
for two threads oversubscribe the cores, whose waiting BLAS threads then spin (measured on a
busy machine: the small benchmark step went from 0.17 s to 2.2 s). So while the shards run (one
or more), ``loss_and_grads`` sets OpenBLAS to one thread and afterwards back to what it was
(``blas_threads``, through the OpenBLAS library NumPy loaded, found in /proc/self/maps; where it
cannot be found, on another BLAS or system, set ``OPENBLAS_NUM_THREADS=1`` or its equivalent
before starting Python).

The process around the threads (``PROCESS_ENV``, which ``python -m gla_np.train`` and
benchmarks/train_step.py set by starting themselves again; a library user sets it in the shell):
the BLAS thread variables as above, and glibc's malloc keeping freed memory for the next step
instead of handing each large temporary back to the kernel and faulting it in again (without
this, system time was a quarter of the step). The trim threshold keeps the main thread's heap.
A shard's thread allocates from heaps of its own (glibc's arenas, at most 64 MiB each), and
glibc gives such a heap back as soon as all of it is free unless the top pad is as large as a
heap, so the pad is set to 64 MiB (without it, each shard thread of the large benchmark config
faulted about 6,800 pages back in per step). And glibc's malloc asks the kernel for huge
pages (2 MiB) under its heaps (the tunable ``glibc.malloc.hugetlb=1``, where transparent huge
pages are on or on request, as on most Linux systems), fewer and larger pages to map a step's
arrays (measured: the small benchmark step about 5 % faster at one and two threads; a glibc
older than 2.35 ignores it). ``process_environment`` applies the settings to an environment,
adding the tunable to any others already in ``GLIBC_TUNABLES``. All are read only when the
process starts. docs/performance.md has the measurements.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from gla_np._checks import check_positive_int
from gla_np.training import lm

IGNORE = -100  # tasks.IGNORE and the ignore_index of lm.loss_and_grads

PROCESS_ENV = {
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20),  # arrays up to 32 MiB from the heap ...
    "MALLOC_TRIM_THRESHOLD_": str(2 ** 30),  # ... which is not shrunk below 1 GiB of free top
    "MALLOC_TOP_PAD_": str(64 * 2 ** 20),  # ... nor a shard thread's heaps (64 MiB at most)
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",  # the heaps on huge pages where possible
}


def process_environment(environ, settings=None):
    """``environ`` (a mapping, such as ``os.environ``) with ``settings`` applied, as a new dict.

    ``settings`` defaults to ``PROCESS_ENV``; each of its variables takes its value, except
    ``GLIBC_TUNABLES``, a list ``name=value:name=value``, where the settings' tunables replace
    those of the same name and the others already there are kept (before them). Applying it
    twice gives what applying it once does, so ``process_environment(os.environ) ==
    dict(os.environ)`` says that a process already runs with the settings.
    """
    settings = PROCESS_ENV if settings is None else settings
    env = dict(environ)
    env.update(settings)
    if settings.get("GLIBC_TUNABLES") and environ.get("GLIBC_TUNABLES"):
        ours = settings["GLIBC_TUNABLES"].split(":")
        names = {item.split("=", 1)[0] for item in ours}
        kept = [item for item in environ["GLIBC_TUNABLES"].split(":")
                if item and item.split("=", 1)[0] not in names]
        env["GLIBC_TUNABLES"] = ":".join(kept + ours)
    return env

_POOLS = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools_after_fork():
    """In a child made by ``os.fork`` (``multiprocessing``'s default start on Linux): the
    parent's pools hold worker threads that do not exist in the child, and work given to them
    would wait forever, so the child starts with no pools and a lock of its own."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def default_threads():
    """The number of cores this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


_BLAS = {}  # "funcs": (get, set) of the loaded OpenBLAS, or None; looked up once


def _openblas_thread_functions():
    """(get_num_threads, set_num_threads) of the OpenBLAS that NumPy loaded, or None."""
    if "funcs" not in _BLAS:
        _BLAS["funcs"] = None
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f
                                if "openblas" in line.lower() and "/" in line})
        except OSError:  # not Linux
            paths = []
        names = [(f"{prefix}_get_num_threads{suffix}", f"{prefix}_set_num_threads{suffix}")
                 for prefix in ("scipy_openblas", "openblas") for suffix in ("64_", "")]
        for path in paths:
            try:
                lib = ctypes.CDLL(path)  # already loaded by NumPy: the same library
            except OSError:
                continue
            for get, set_ in names:
                if hasattr(lib, get) and hasattr(lib, set_):
                    getattr(lib, get).restype = ctypes.c_int
                    getattr(lib, set_).argtypes = [ctypes.c_int]
                    _BLAS["funcs"] = (getattr(lib, get), getattr(lib, set_))
                    return _BLAS["funcs"]
    return _BLAS["funcs"]


def blas_threads(n=None):
    """OpenBLAS's thread count for the whole process, after setting it to ``n`` if given.

    Returns None (and changes nothing) when the OpenBLAS NumPy uses cannot be found.
    """
    funcs = _openblas_thread_functions()
    if funcs is None:
        return None
    get, set_ = funcs
    if n is not None:
        set_(check_positive_int("n", n))
    return int(get())


@contextlib.contextmanager
def _one_blas_thread():
    """OpenBLAS on one thread inside the block, as it was afterwards."""
    before = blas_threads()
    if before is None or before == 1:
        yield
        return
    blas_threads(1)
    try:
        yield
    finally:
        blas_threads(before)


def _pool(threads):
    """A thread pool of ``threads`` workers, made once per size and reused for every step
    (``loss_and_grads`` asks for one worker fewer than its shards: it runs the first itself)."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="gla_np-shard")
        return _POOLS[threads]


def shard_bounds(batch_size, shards):
    """``[(start, stop), ...]``: ``shards`` contiguous row ranges covering the batch, sizes
    differing by at most one (fewer ranges when the batch has fewer rows than ``shards``)."""
    shards = min(shards, batch_size)
    edges = [batch_size * i // shards for i in range(shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def loss_and_grads(params, ids, targets, config, *, threads=None, training=False, rng=None):
    """``lm.loss_and_grads`` over the batch, cut into ``threads`` shards run in parallel.

    ``threads`` None means every core (``default_threads()``); it counts every thread the step
    runs, so OpenBLAS runs on one thread meanwhile. Returns ``(loss, grads, logits)``
    exactly as ``lm.loss_and_grads`` does: the loss a Python float, the mean cross-entropy over
    the batch's target positions; grads keyed like params; logits (B, T, vocab).
    """
    threads = default_threads() if threads is None else check_positive_int("threads", threads)
    ids, targets = np.asarray(ids), np.asarray(targets)
    if ids.ndim != 2 or targets.shape != ids.shape:
        raise ValueError(f"ids, targets: expected two arrays of one shape (B, T), got "
                         f"{ids.shape} and {targets.shape}")
    bounds = shard_bounds(ids.shape[0], threads)
    if len(bounds) == 1:
        with _one_blas_thread():  # threads=1 means one thread, BLAS's included
            return lm.loss_and_grads(params, ids, targets, config, training=training, rng=rng)

    rngs = [None] * len(bounds)
    if training and rng is not None:  # one generator per shard, seeded from the step's rng
        rngs = [np.random.default_rng(seed)
                for seed in rng.integers(0, 2 ** 63, size=len(bounds))]

    counts = [int((targets[start:stop] != IGNORE).sum()) for start, stop in bounds]
    total = sum(counts)
    # loss = sum_s (n_s / n) loss_s,  grad = sum_s (n_s / n) grad_s   (module docstring)
    weights = [count / total if total else 0.0 for count in counts]

    def run(i):
        start, stop = bounds[i]
        loss, grads, logits = lm.loss_and_grads(params, ids[start:stop], targets[start:stop],
                                                config, training=training, rng=rngs[i])
        for g in grads.values():  # (n_s / n) grad_s, in the shard's own thread
            np.multiply(g, g.dtype.type(weights[i]), out=g)  # its own new array
        return loss, grads, logits

    with _one_blas_thread():  # one BLAS thread per shard (module docstring)
        # The calling thread runs the first shard while the pool runs the others: one thread
        # fewer to wake and wait for (measured: docs/performance.md).
        later = [_pool(len(bounds) - 1).submit(run, i) for i in range(1, len(bounds))]
        try:
            first = run(0)
        finally:
            wait(later)  # also when the first shard raised: no shard outlives the call
        results = [first] + [shard.result() for shard in later]
    loss = sum(w * shard_loss for w, (shard_loss, _, _) in zip(weights, results))
    grads = results[0][1]  # the weighted sum in shard order, into the first shard's arrays
    for _, shard_grads, _ in results[1:]:
        for name, g in grads.items():
            g += shard_grads[name]
    logits = np.concatenate([shard_logits for _, _, shard_logits in results])
    return float(loss), grads, logits
