"""Shared by the training command's tests: a tiny run's options, and the one-line refusal."""

import pytest

from gla_np.training import train

PREFIX = "python -m gla_np.train: error: "


def tiny(steps):
    """Options of a run small enough for a test: about a second for a few steps."""
    return ["--seq_len", "16", "--num_pairs", "2", "--vocab_size", "16", "--batch_size", "8",
            "--hidden", "8", "--layers", "1", "--heads", "2", "--head_dim", "4", "--warmup", "2",
            "--eval_batches", "2", "--threads", "1", "--steps", str(steps)]


def refused(argv, capsys):
    """Run main; return its one-line error after the prefix (asserting status 2, one line)."""
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(PREFIX), err
    return err[len(PREFIX):]
