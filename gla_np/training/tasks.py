"""Seeded toy sequence tasks that test memory, and their exact accuracy.

Each task returns ``(inputs, targets)``, two int64 arrays of shape ``(B, T)``. A model reads
``inputs`` and, at every position, predicts a token; ``targets[b, t]`` is the token it should
predict there, or ``IGNORE`` (-100) where nothing is asked. Only target positions count, in
the loss (cross_entropy's ``ignore_index``) and in ``accuracy``. All randomness comes from the
``np.random.Generator`` passed in, so a seed fixes the data exactly.

Multi-query associative recall (MQAR; Arora et al., "Zoology", 2023), Zoology's layout::

    position  0   1   2   3  ...  2P-2 2P-1 | 2P ...                                  T-1
    input     k1  v1  k2  v2 ...  kP   vP   | filler, with each key k_i once as a query
    target    -   -   -   -  ...  -    -    | v_i at the position of query k_i, - elsewhere

Keys are distinct tokens from the lower half of the vocabulary (``[1, V/2)``), values any
tokens from the upper half (``[V/2, V)``). Query i sits at an even offset ``2 * gap_i`` into the
query region; the gaps are distinct and drawn with probability proportional to
``gap^(power_a - 1)`` (gap counted from 1), so most queries come early and a few far away.
Fillers are uniform tokens from the whole vocabulary except the row's own keys, and carry no
target. (Zoology draws them from the whole vocabulary; with T = 64, 8 pairs and a vocabulary of
256, 72 % of rows would then have a filler that repeats a key, the token after it posing as a
second value for that key, and 4 % of queries would see their key repeated before them: a
ceiling on accuracy that has nothing to do with memory. Keeping keys out of the fillers leaves
every query exactly one answer.) A query can only be answered by remembering which value
followed its key: exactly the recall a fixed-size state finds hard.

Copying and selective copying share one layout: a data region of ``T - N`` positions holding
N data tokens, then N recall markers. The target at the i-th marker is the i-th data token::

    copying            input  x1 x2 .. xN  0  0 ..  0 | M  M .. M     (M = V - 1, the marker)
    selective copying  input  0 x1 0 0 x2 .. 0 xN  0  | M  M .. M     (data at random places)
                       target -  -  ..                | x1 x2 .. xN

Data tokens are drawn from ``[1, V - 1)`` (0 is the blank, V - 1 the marker). In copying the
data sits at the start; in selective copying at sorted random positions of the data region,
so the model must pick the tokens out of the blanks (the task of the Mamba paper).

Latest-value recall (MQAR with reassigned keys; this project's task for the forget gate): P
keys are written again and again with fresh values, then each is asked once, and the answer is
the value it was given *last*::

    position  0 .. L-1 | L    L+1  L+2  L+3  ...  T-P-2 T-P-1 | T-P   ...           T-1
    input     0 .. 0   | k    v    k'   v'   ...  k''   v''   | q(k1) q(k2) ... q(kP)
    target    -        | -    -    -    -    ...  -     -     | latest value of k1 ...

The write region holds ``(T - P) // 2`` key-value writes (a blank 0 pads the front when
``T - P`` is odd, ``L`` = 0 or 1). Every one of the row's P keys is written at least once; the
other writes pick one of the P keys at random, so most keys are written several times, each
time with a new random value. Keys come from ``[1, V/4)``, values from ``[V/2, V)``, and the
query for key k is a separate token ``q(k) = k + V/4`` (from ``[V/4, V/2)``), asked once per
key in random order in the last P positions. The query token differs from the key token on
purpose: in a one-layer model the forget gate at position t sees only the token at t, so a
gate that wipes key k's memory whenever k is written would wipe it at the query too if the
query were the same token. With its own query token the gate can tell a rewrite from a
question. Why a model without decay cannot do this task (its state is a sum that does not know
which write came last) and what a K x V state can hold is explained in docs/experiments.md.

Text (``gla_np.training.text``): windows of a UTF-8 file, one token per character, the target
at every position the next character; the first 90 % of the file is trained on, the rest held
out.
"""

from __future__ import annotations

import numbers

import numpy as np

from gla_np.training import text

IGNORE = -100


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a np.random.Generator, got {type(rng).__name__}")
    return rng


def _check_pairs_task(rng, batch_size, num_pairs, seq_len, vocab_size, *, rows_per_pair,
                      rows_why, key_share):
    """The checks of the key-value tasks: ``seq_len >= rows_per_pair * num_pairs`` (``rows_why``
    says why) and room for ``num_pairs`` distinct keys in ``[1, vocab_size // key_share)``.
    Returns ``(B, P, T, V)``."""
    _check_rng(rng)
    B = _check_int("batch_size", batch_size, 1)
    P = _check_int("num_pairs", num_pairs, 1)
    T = _check_int("seq_len", seq_len, 1)
    V = _check_int("vocab_size", vocab_size, 2)
    if T < rows_per_pair * P:
        raise ValueError(f"seq_len: expected >= {rows_per_pair} * num_pairs = {rows_per_pair * P} "
                         f"({rows_why}), got {T}")
    if V // key_share - 1 < P:
        raise ValueError(f"vocab_size: expected >= {key_share} * (num_pairs + 1) = "
                         f"{key_share * (P + 1)} so that {P} distinct keys fit in "
                         f"[1, vocab_size // {key_share}), got {V}")
    return B, P, T, V


def mqar(rng, batch_size, *, seq_len=64, num_pairs=8, vocab_size=256, power_a=0.01):
    """Multi-query associative recall in Zoology's layout (see the module docstring).

    Needs ``seq_len >= 4 * num_pairs`` (the pairs, then room for one query every other
    position) and ``vocab_size >= 2 * (num_pairs + 1)`` (enough distinct keys in ``[1, V/2)``).
    Returns ``(inputs, targets)``, int64 ``(batch_size, seq_len)``.
    """
    B, P, T, V = _check_pairs_task(rng, batch_size, num_pairs, seq_len, vocab_size, rows_per_pair=4,
                                   rows_why="the pairs and one query slot every other position",
                                   key_share=2)
    if isinstance(power_a, bool) or not isinstance(power_a, numbers.Real) or not 0 < power_a <= 1:
        raise ValueError(f"power_a: expected a number in (0, 1], got {power_a!r}")
    context = 2 * P  # the key-value pairs
    slots = (T - context) // 2  # query slots at even offsets of the query region

    # P distinct keys per row: the first P of a random permutation of the key vocabulary.
    key_vocab = np.arange(1, V // 2)
    order = rng.random((B, key_vocab.size)).argsort(axis=1)  # (B, V/2 - 1)
    keys = key_vocab[order[:, :P]]  # (B, P)
    values = rng.integers(V // 2, V, size=(B, P))  # (B, P)

    # Distinct gaps per row, P(gap) proportional to gap^(a - 1), gap = 1..slots.
    weights = power_a * np.arange(1, slots + 1, dtype=np.float64) ** (power_a - 1)
    weights /= weights.sum()
    gaps = np.stack([rng.choice(slots, size=P, replace=False, p=weights)
                     for _ in range(B)])  # (B, P), in [0, slots)
    query_pos = context + 2 * gaps  # (B, P)

    inputs = rng.integers(0, V, size=(B, T))  # fillers everywhere, overwritten below
    is_key = (inputs[:, :, None] == keys[:, None, :]).any(axis=2)  # (B, T)
    while is_key.any():  # redraw fillers that hit one of the row's keys (P / V of them)
        inputs[is_key] = rng.integers(0, V, size=int(is_key.sum()))
        is_key = (inputs[:, :, None] == keys[:, None, :]).any(axis=2)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    np.put_along_axis(inputs, query_pos, keys, axis=1)
    targets = np.full((B, T), IGNORE, dtype=np.int64)
    np.put_along_axis(targets, query_pos, values, axis=1)
    return inputs.astype(np.int64), targets


def _copy_layout(rng, batch_size, seq_len, num_tokens, vocab_size, selective):
    _check_rng(rng)
    B = _check_int("batch_size", batch_size, 1)
    N = _check_int("num_tokens", num_tokens, 1)
    T = _check_int("seq_len", seq_len, 1)
    V = _check_int("vocab_size", vocab_size, 3)
    if T < 2 * N:
        raise ValueError(f"seq_len: expected >= 2 * num_tokens = {2 * N} (a data region of at "
                         f"least num_tokens, then num_tokens markers), got {T}")
    region = T - N  # length of the data region
    data = rng.integers(1, V - 1, size=(B, N))  # (B, N), neither blank nor marker
    if selective:
        places = np.sort(rng.random((B, region)).argsort(axis=1)[:, :N], axis=1)  # (B, N)
    else:
        places = np.broadcast_to(np.arange(N), (B, N))
    inputs = np.zeros((B, T), dtype=np.int64)
    np.put_along_axis(inputs, places, data, axis=1)
    inputs[:, region:] = V - 1  # the recall markers
    targets = np.full((B, T), IGNORE, dtype=np.int64)
    targets[:, region:] = data
    return inputs, targets


def copying(rng, batch_size, *, seq_len=64, num_tokens=8, vocab_size=16):
    """Copy N tokens from the start of the sequence to the N marker positions at its end.

    Needs ``seq_len >= 2 * num_tokens`` and ``vocab_size >= 3``. Returns int64
    ``(inputs, targets)`` of shape ``(batch_size, seq_len)``.
    """
    return _copy_layout(rng, batch_size, seq_len, num_tokens, vocab_size, selective=False)


def selective_copying(rng, batch_size, *, seq_len=64, num_tokens=8, vocab_size=16):
    """Copy N tokens scattered among blanks, in order, to the N marker positions at the end.

    Needs ``seq_len >= 2 * num_tokens`` and ``vocab_size >= 3``. Returns int64
    ``(inputs, targets)`` of shape ``(batch_size, seq_len)``.
    """
    return _copy_layout(rng, batch_size, seq_len, num_tokens, vocab_size, selective=True)


def latest_recall(rng, batch_size, *, seq_len=64, num_pairs=8, vocab_size=128):
    """Latest-value recall: keys reassigned many times, the query asks for the last value.

    ``num_pairs`` is the number of distinct keys P per row (see the module docstring for the
    layout). Needs ``seq_len >= 3 * num_pairs`` (at least one write per key, then P queries)
    and ``vocab_size >= 4 * (num_pairs + 1)`` (P distinct keys in ``[1, V/4)``). Returns
    ``(inputs, targets)``, int64 ``(batch_size, seq_len)``.
    """
    B, P, T, V = _check_pairs_task(rng, batch_size, num_pairs, seq_len, vocab_size, rows_per_pair=3,
                                   rows_why="one write of each key, then one query per key",
                                   key_share=4)
    W = (T - P) // 2  # writes
    start = T - P - 2 * W  # 0 or 1: a blank pads the front

    key_vocab = np.arange(1, V // 4)
    order = rng.random((B, key_vocab.size)).argsort(axis=1)  # (B, V/4 - 1)
    keys = key_vocab[order[:, :P]]  # (B, P), distinct per row
    # which key each write uses: every key once, the other W - P at random, all shuffled
    slot = np.concatenate([np.broadcast_to(np.arange(P), (B, P)),
                           rng.integers(0, P, size=(B, W - P))], axis=1)  # (B, W)
    slot = np.take_along_axis(slot, rng.random((B, W)).argsort(axis=1), axis=1)
    write_keys = np.take_along_axis(keys, slot, axis=1)  # (B, W)
    write_values = rng.integers(V // 2, V, size=(B, W))  # (B, W)
    # the last write of each key: the largest write index whose slot is that key
    is_key = slot[:, :, None] == np.arange(P)  # (B, W, P)
    last = np.where(is_key, np.arange(W)[None, :, None], -1).max(axis=1)  # (B, P), each >= 0
    latest = np.take_along_axis(write_values, last, axis=1)  # (B, P)
    asked = rng.random((B, P)).argsort(axis=1)  # (B, P): which key each query asks

    inputs = np.zeros((B, T), dtype=np.int64)
    inputs[:, start:T - P:2] = write_keys
    inputs[:, start + 1:T - P:2] = write_values
    inputs[:, T - P:] = np.take_along_axis(keys, asked, axis=1) + V // 4
    targets = np.full((B, T), IGNORE, dtype=np.int64)
    targets[:, T - P:] = np.take_along_axis(latest, asked, axis=1)
    return inputs, targets


TASKS = {"mqar": mqar, "copying": copying, "selective_copying": selective_copying,
         "latest_recall": latest_recall, "text": text.windows}


def make_batch(task, rng, batch_size, **sizes):
    """``TASKS[task](rng, batch_size, **sizes)``, with a clear error for an unknown task."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task](rng, batch_size, **sizes)


def accuracy(logits_or_predictions, targets, ignore_index=IGNORE):
    """Fraction of target positions predicted exactly, as a Python float.

    ``logits_or_predictions`` is either logits ``(B, T, V)`` (the prediction is the argmax over
    V) or integer predictions ``(B, T)``. Positions whose target is ``ignore_index`` are not
    counted. Raises ValueError when there is no target position at all.
    """
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets: expected an integer array, got dtype {targets.dtype}")
    pred = np.asarray(logits_or_predictions)
    if pred.ndim == targets.ndim + 1:
        pred = pred.argmax(axis=-1)
    elif pred.ndim != targets.ndim or not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"logits_or_predictions: expected logits of shape {targets.shape} + "
                         f"(vocab,) or integer predictions of shape {targets.shape}, got "
                         f"{pred.dtype} array of shape {pred.shape}")
    if pred.shape != targets.shape:
        raise ValueError(f"logits_or_predictions: expected leading shape {targets.shape}, got "
                         f"{pred.shape}")
    counted = targets != ignore_index
    if not counted.any():
        raise ValueError("targets: no target positions (every entry is ignore_index)")
    return float(np.mean(pred[counted] == targets[counted]))
