"""Data parallel steps: N threads give the one-thread loss and gradients, to rounding."""

import os
import platform
import select
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

from gla_np import data_parallel, lm, tasks
from gla_np.layers.model import GLAConfig
from lm_helpers import perturbed_params


def _config(**kw):
    base = dict(embed_dim=6, hidden_size=6, num_layers=1, num_heads=2, head_dim=3,
                expand_factor=2, dropout=0.0, gate_rank=2, chunk_size=4, dtype="float64")
    base.update(kw)
    return GLAConfig(**base)


def _problem(config, seed=0, B=5, T=7, vocab=9):
    rng = np.random.default_rng(seed)
    params = perturbed_params(config, vocab, rng)
    ids = rng.integers(0, vocab, size=(B, T))
    # rows with very different numbers of targets, so an unweighted mean of shards is wrong
    keep = rng.random((B, T)) < np.linspace(0.1, 0.9, B)[:, None]
    targets = np.where(keep, rng.integers(0, vocab, size=(B, T)), tasks.IGNORE)
    return params, ids, targets


def _assert_same_step(a, b):
    (loss_a, grads_a, logits_a), (loss_b, grads_b, logits_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-13)
    assert list(grads_a) == list(grads_b)
    for name in grads_a:
        np.testing.assert_allclose(grads_a[name], grads_b[name], rtol=1e-11, atol=1e-15,
                                   err_msg=name)
    np.testing.assert_allclose(logits_a, logits_b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("threads", [2, 3, 5, 8], ids=lambda n: f"threads{n}")
def test_threads_match_one_thread_float64(threads):
    config = _config()
    params, ids, targets = _problem(config)
    one = lm.loss_and_grads(params, ids, targets, config)
    _assert_same_step(data_parallel.loss_and_grads(params, ids, targets, config,
                                                   threads=threads), one)


def test_a_shard_without_targets_gets_weight_zero():
    config = _config()
    params, ids, targets = _problem(config, seed=1, B=4)
    targets[:2] = tasks.IGNORE  # the first of two shards asks nothing
    one = lm.loss_and_grads(params, ids, targets, config)
    _assert_same_step(data_parallel.loss_and_grads(params, ids, targets, config, threads=2), one)


def test_no_targets_anywhere_gives_zero_loss_and_gradients():
    config = _config()
    params, ids, targets = _problem(config, seed=2, B=4)
    loss, grads, _ = data_parallel.loss_and_grads(params, ids, np.full_like(targets, -100),
                                                  config, threads=2)
    assert loss == 0.0 and all(not g.any() for g in grads.values())


def test_float32_keeps_dtype():
    config = _config(dtype="float32")
    params, ids, targets = _problem(config, seed=3)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    loss, grads, logits = data_parallel.loss_and_grads(params, ids, targets, config, threads=2)
    loss1, grads1, _ = lm.loss_and_grads(params, ids, targets, config)
    assert logits.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    assert loss == pytest.approx(loss1, rel=1e-5)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads1[name], rtol=1e-4, atol=1e-6)


def test_one_thread_is_lm_loss_and_grads_exactly_with_dropout():
    config = _config(dropout=0.3)
    params, ids, targets = _problem(config, seed=4)
    a = data_parallel.loss_and_grads(params, ids, targets, config, threads=1, training=True,
                                     rng=np.random.default_rng(7))
    b = lm.loss_and_grads(params, ids, targets, config, training=True,
                          rng=np.random.default_rng(7))
    assert a[0] == b[0] and all(np.array_equal(a[1][n], b[1][n]) for n in a[1])


def test_dropout_shards_are_seeded_from_rng():
    config = _config(dropout=0.3)
    params, ids, targets = _problem(config, seed=5)

    def run(seed):
        return data_parallel.loss_and_grads(params, ids, targets, config, threads=2,
                                            training=True, rng=np.random.default_rng(seed))[0]

    assert run(7) == run(7) != run(8)


def test_shard_bounds_cover_the_batch():
    assert data_parallel.shard_bounds(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert data_parallel.shard_bounds(2, 4) == [(0, 1), (1, 2)]
    assert data_parallel.shard_bounds(5, 1) == [(0, 5)]
    assert data_parallel.default_threads() >= 1


def test_bad_input():
    config = _config()
    params, ids, targets = _problem(config)
    with pytest.raises(ValueError, match="threads"):
        data_parallel.loss_and_grads(params, ids, targets, config, threads=0)
    with pytest.raises(ValueError, match="ids, targets"):
        data_parallel.loss_and_grads(params, ids, targets[:, 1:], config, threads=2)


@pytest.mark.parametrize("row", [0, 4], ids=["first-shard", "last-shard"])
def test_a_failing_shard_raises_its_error_after_every_shard_ended(row, monkeypatch):
    """The first shard runs in the calling thread, the others in the pool: an error in
    either reaches the caller, and only once every shard has returned."""
    config = _config()
    params, ids, targets = _problem(config)
    ids[row, 0] = 99  # outside the vocabulary of 9
    running, real = [], lm.loss_and_grads

    def counted(*args, **kwargs):
        running.append(1)
        try:
            return real(*args, **kwargs)
        finally:
            running.pop()

    monkeypatch.setattr(data_parallel.lm, "loss_and_grads", counted)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 9\)"):
        data_parallel.loss_and_grads(params, ids, targets, config, threads=3)
    assert running == []


def test_blas_runs_one_thread_during_the_shards_and_is_restored():
    config = _config()
    params, ids, targets = _problem(config)
    seen = []
    original = lm.loss_and_grads

    def spy(*args, **kwargs):
        seen.append(data_parallel.blas_threads())
        return original(*args, **kwargs)

    before = data_parallel.blas_threads()
    data_parallel.lm.loss_and_grads = spy
    try:
        data_parallel.loss_and_grads(params, ids, targets, config, threads=2)
    finally:
        data_parallel.lm.loss_and_grads = original
    assert len(seen) == 2 and data_parallel.blas_threads() == before
    if before is not None:  # OpenBLAS found (it is, for NumPy's own wheels on Linux)
        assert seen == [1, 1]
        assert data_parallel.blas_threads(before) == before


def test_process_env_asks_for_huge_pages_through_glibc_tunables_only():
    tunables = dict(item.split("=", 1)
                    for item in data_parallel.PROCESS_ENV["GLIBC_TUNABLES"].split(":"))
    # the malloc settings stay in their MALLOC_* variables; the tunable adds the huge pages
    assert tunables == {"glibc.malloc.hugetlb": "1"}


def _transparent_huge_pages():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = f.read()
    except OSError:
        return False
    libc, version = platform.libc_ver()
    return ("[never]" not in mode and libc == "glibc"
            and tuple(map(int, version.split(".")[:2])) >= (2, 35))


def test_process_env_puts_mallocs_heap_on_huge_pages():
    # 64 KiB arrays (far below the size from which NumPy asks for huge pages itself), 32 MiB in
    # all, from malloc's heap. Every machine runs the process with the setting (it must start
    # and work); where the kernel and glibc offer huge pages, the heap must sit on them.
    code = ("import numpy as np\n"
            "keep = [np.ones(8192) for _ in range(512)]\n"
            "assert sum(float(x.sum()) for x in keep) == 8192 * 512\n"
            "print(next(line.split()[1] for line in open('/proc/self/smaps_rollup')\n"
            "           if line.startswith('AnonHugePages')))\n")
    env = {**os.environ, **data_parallel.PROCESS_ENV}
    huge_kib = int(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                  capture_output=True, text=True).stdout)
    if _transparent_huge_pages():
        assert huge_kib > 0
    else:  # glibc ignores the tunable there: ordinary pages, a count the kernel still reports
        assert huge_kib >= 0


def test_process_environment_sets_every_variable_and_keeps_a_users_other_tunables():
    settings = data_parallel.PROCESS_ENV
    plain = data_parallel.process_environment({"HOME": "/h"})
    assert plain == {"HOME": "/h", **settings}
    users = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0",
             "OPENBLAS_NUM_THREADS": "4"}
    env = data_parallel.process_environment(users)
    # the user's other tunable stays, the one of the same name takes the setting's value
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + settings["GLIBC_TUNABLES"]
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert users["GLIBC_TUNABLES"].endswith("hugetlb=0")  # the mapping given is not changed
    # applied twice it is applied once: a process started with it is not started again
    assert data_parallel.process_environment(env) == env
    assert data_parallel.process_environment(plain) == plain
    # a subset of the settings (PyTorch's benchmark takes only malloc's) touches nothing else
    only = {"GLIBC_TUNABLES": settings["GLIBC_TUNABLES"]}
    assert data_parallel.process_environment({"X": "1"}, only) == {"X": "1", **only}


def test_a_forked_child_runs_its_own_shards():
    # the parent's pool (made by the first call) has no threads in a child made by fork; the
    # child's two-thread step must make its own, not wait for the parent's forever
    config = _config()
    params, ids, targets = _problem(config)
    one = lm.loss_and_grads(params, ids, targets, config)
    data_parallel.loss_and_grads(params, ids, targets, config, threads=2)
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of fork in a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report the loss through the pipe, then exit at once
        status = 1
        try:
            os.close(read)
            loss = data_parallel.loss_and_grads(params, ids, targets, config, threads=2)[0]
            os.write(write, repr(float(loss)).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 60)  # a child stuck on the parent's pool
    if not ready:                                    # never writes
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        reported = f.read()
    assert ready, "the forked child's two-thread step did not end in 60 s"
    assert os.waitstatus_to_exitcode(status) == 0
    assert float(reported) == pytest.approx(float(one[0]), rel=1e-13)
