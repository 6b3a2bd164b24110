"""Toy tasks: layout invariants, determinism, validation and the accuracy metric."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gla_np import tasks
from gla_np.training.tasks import IGNORE


def _check_mqar_row(inp, tgt, P, V):
    T = inp.size
    keys, values = inp[0:2 * P:2], inp[1:2 * P:2]
    assert len(set(keys.tolist())) == P  # distinct keys
    assert ((keys >= 1) & (keys < V // 2)).all()
    assert ((values >= V // 2) & (values < V)).all()
    assert (tgt[:2 * P] == IGNORE).all()  # no target inside the pairs
    query_pos = np.flatnonzero(tgt != IGNORE)
    assert query_pos.size == P  # every key is asked exactly once
    assert ((query_pos - 2 * P) % 2 == 0).all() and query_pos.max() < T
    lookup = dict(zip(keys.tolist(), values.tolist()))
    for t in query_pos:
        assert inp[t] in lookup  # the query is a key from the context...
        assert tgt[t] == lookup[inp[t]]  # ...and its target the value paired with it
    assert sorted(inp[query_pos].tolist()) == sorted(keys.tolist())
    # outside the pairs, a key occurs only at its query: every query has exactly one answer
    later = inp[2 * P:]
    assert np.isin(later, keys).sum() == P
    assert ((inp >= 0) & (inp < V)).all()


@given(P=st.integers(1, 6), extra=st.integers(0, 9), V_extra=st.integers(0, 40),
       seed=st.integers(0, 2**16))
def test_mqar_layout(P, extra, V_extra, seed):
    T, V = 4 * P + extra, 2 * (P + 1) + V_extra
    inputs, targets = tasks.mqar(np.random.default_rng(seed), 3, seq_len=T, num_pairs=P,
                                 vocab_size=V)
    assert inputs.shape == targets.shape == (3, T)
    assert inputs.dtype == targets.dtype == np.int64
    for b in range(3):
        _check_mqar_row(inputs[b], targets[b], P, V)


def test_mqar_default_sizes_and_early_queries():
    inputs, targets = tasks.mqar(np.random.default_rng(0), 256)
    assert inputs.shape == (256, 64)
    _check_mqar_row(inputs[0], targets[0], 8, 256)
    # the power law puts most queries near the start of the query region (gap < 12 of 24)
    offsets = np.nonzero(targets != IGNORE)[1] - 16
    assert np.mean(offsets < 24) > 0.6


@pytest.mark.parametrize("task", ["copying", "selective_copying"])
def test_copy_layouts(task):
    N, T, V = 5, 17, 9
    inputs, targets = tasks.make_batch(task, np.random.default_rng(3), 4, seq_len=T,
                                       num_tokens=N, vocab_size=V)
    assert inputs.shape == targets.shape == (4, T)
    for inp, tgt in zip(inputs, targets):
        assert (inp[T - N:] == V - 1).all()  # the markers
        assert (tgt[:T - N] == IGNORE).all()
        data = inp[:T - N][inp[:T - N] != 0]  # the non-blank tokens of the data region, in order
        np.testing.assert_array_equal(tgt[T - N:], data)
        assert ((data >= 1) & (data < V - 1)).all()
        if task == "copying":
            np.testing.assert_array_equal(inp[:N], data)


def test_selective_copying_scatters_its_tokens():
    inputs, _ = tasks.selective_copying(np.random.default_rng(0), 64, seq_len=40, num_tokens=4)
    starts_with_data = (inputs[:, :4] != 0).all(axis=1)
    assert starts_with_data.mean() < 0.1  # contiguous at the start only by rare chance


def _check_latest_recall_row(inp, tgt, P, V):
    """Replays the writes one by one (a dict, the last write wins) and checks every answer."""
    T = inp.size
    W = (T - P) // 2
    start = T - P - 2 * W
    assert (inp[:start] == 0).all() and (tgt[:T - P] == IGNORE).all()
    write_keys, write_values = inp[start:T - P:2], inp[start + 1:T - P:2]
    assert ((write_keys >= 1) & (write_keys < V // 4)).all()
    assert ((write_values >= V // 2) & (write_values < V)).all()
    memory = {}
    for k, v in zip(write_keys.tolist(), write_values.tolist()):
        memory[k] = v
    assert len(memory) == P  # P distinct keys, each written at least once
    queries = inp[T - P:] - V // 4  # the key each query token stands for
    assert sorted(queries.tolist()) == sorted(memory)  # every key asked exactly once
    assert tgt[T - P:].tolist() == [memory[k] for k in queries.tolist()]


@given(P=st.integers(1, 6), extra=st.integers(0, 21), V_extra=st.integers(0, 40),
       seed=st.integers(0, 2**16))
def test_latest_recall_layout(P, extra, V_extra, seed):
    T, V = 3 * P + extra, 4 * (P + 1) + V_extra
    inputs, targets = tasks.latest_recall(np.random.default_rng(seed), 3, seq_len=T,
                                          num_pairs=P, vocab_size=V)
    assert inputs.shape == targets.shape == (3, T)
    assert inputs.dtype == targets.dtype == np.int64
    for b in range(3):
        _check_latest_recall_row(inputs[b], targets[b], P, V)


def test_latest_recall_reassigns_keys():
    """At the defaults most keys are written more than once, and for many queries an earlier
    value of the key differs from the asked (latest) one: forgetting is needed, not optional."""
    inputs, targets = tasks.latest_recall(np.random.default_rng(1), 200)
    P, V, T = 8, 128, 64
    stale = 0
    for inp, tgt in zip(inputs, targets):
        _check_latest_recall_row(inp, tgt, P, V)
        keys, values = inp[0:T - P:2], inp[1:T - P:2]
        for q, answer in zip(inp[T - P:] - V // 4, tgt[T - P:]):
            stale += bool(np.any(values[keys == q] != answer))
    assert stale / (200 * P) > 0.8


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_determinism(task):
    a = tasks.make_batch(task, np.random.default_rng(42), 5)
    b = tasks.make_batch(task, np.random.default_rng(42), 5)
    c = tasks.make_batch(task, np.random.default_rng(43), 5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("call, match", [
    (lambda r: tasks.mqar(r, 2, seq_len=31, num_pairs=8), "seq_len"),
    (lambda r: tasks.mqar(r, 2, num_pairs=8, vocab_size=17), "vocab_size"),
    (lambda r: tasks.mqar(r, 0), "batch_size"),
    (lambda r: tasks.mqar(r, 2, num_pairs=0), "num_pairs"),
    (lambda r: tasks.mqar(r, 2, power_a=0.0), "power_a"),
    (lambda r: tasks.copying(r, 2, seq_len=9, num_tokens=5), "seq_len"),
    (lambda r: tasks.selective_copying(r, 2, vocab_size=2), "vocab_size"),
    (lambda r: tasks.mqar(42, 2), "rng"),
    (lambda r: tasks.latest_recall(r, 2, seq_len=23, num_pairs=8), "seq_len"),
    (lambda r: tasks.latest_recall(r, 2, num_pairs=8, vocab_size=35), "vocab_size"),
    (lambda r: tasks.latest_recall(r, 2, num_pairs=0), "num_pairs"),
    (lambda r: tasks.make_batch("sorting", r, 2), "task"),
], ids=["mqar-short-seq", "mqar-small-vocab", "batch0", "pairs0", "power0", "copy-short-seq",
        "selcopy-vocab2", "int-seed", "latest-short-seq", "latest-small-vocab",
        "latest-pairs0", "unknown-task"])
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.random.default_rng(0))


def test_accuracy_counts_target_positions_only():
    targets = np.array([[IGNORE, 3, IGNORE, 1], [2, IGNORE, IGNORE, IGNORE]])
    preds = np.array([[9, 3, 9, 0], [2, 9, 9, 9]])  # 2 of 3 targets right, misses elsewhere
    assert tasks.accuracy(preds, targets) == pytest.approx(2 / 3)
    logits = np.zeros((2, 4, 10))
    np.put_along_axis(logits, preds[..., None], 1.0, axis=-1)
    assert tasks.accuracy(logits, targets) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no target"):
        tasks.accuracy(preds, np.full((2, 4), IGNORE))
    with pytest.raises(ValueError, match="logits_or_predictions"):
        tasks.accuracy(np.zeros((3, 4), dtype=np.int64), targets)
    with pytest.raises(ValueError, match="logits_or_predictions"):
        tasks.accuracy(np.zeros((2, 4)), targets)  # float with the targets' rank


def test_train_command_checks_latest_recall_sizes():
    """python -m gla_np.train refuses latest_recall sizes the task cannot lay out, up front."""
    from gla_np.training import _train_checks, train

    run = {name: value for name, value in vars(train.build_parser().parse_args(
        ["--task", "latest_recall", "--vocab_size", "72"])).items() if name in train.RUN_OPTIONS}
    _train_checks.check_run(run)  # the defaults fit: T = 64 >= 3 * 8, V = 72 >= 4 * 9
    with pytest.raises(ValueError, match=r"--seq_len: expected >= 3 \* num_pairs = 24"):
        _train_checks.check_run(dict(run, seq_len=23))
    with pytest.raises(ValueError, match=r"--vocab_size: expected >= 4 \* \(num_pairs \+ 1\)"):
        _train_checks.check_run(dict(run, vocab_size=35))
    assert train.task_sizes(run) == {"seq_len": 64, "vocab_size": 72, "num_pairs": 8}
