"""What a run writes and when: periodic checkpoints, and a metrics.csv that always agrees with
the checkpoint (written atomically, never cut to its header, never older than the checkpoint,
rebuilt from the checkpoint's history on resume, no second held-out row)."""

import csv
import os

import pytest

from gla_np import checkpoint
from gla_np.training import train

TINY = ["--seq_len", "16", "--num_pairs", "2", "--vocab_size", "16", "--batch_size", "8",
        "--hidden", "8", "--layers", "1", "--heads", "2", "--head_dim", "4", "--warmup", "2",
        "--eval_batches", "2", "--threads", "1"]
SAME = ("step", "split", "loss", "accuracy", "lr", "grad_norm")  # all but the timings


def _rows(folder):
    with open(folder / "metrics.csv", newline="") as f:
        return [tuple(r[k] for k in SAME) for r in csv.DictReader(f)]


def _spy_saves(monkeypatch):
    steps = []
    real = checkpoint.save

    def save(path, **kwargs):
        steps.append(kwargs["step"])
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint, "save", save)
    return steps


def test_the_default_run_saves_several_times():
    parser = train.build_parser()
    assert parser.get_default("steps") // parser.get_default("save_every") >= 4


def test_saves_every_n_steps_and_at_the_end(tmp_path, monkeypatch):
    saved = _spy_saves(monkeypatch)
    train.main(TINY + ["--steps", "7", "--save_every", "3", "--log_every", "2",
                       "--out", str(tmp_path)])
    assert saved == [3, 6, 7, 7]  # every 3 steps, the end, then with the held-out row
    assert checkpoint.load(tmp_path / "checkpoint.npz").step == 7
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.csv"]  # no leftovers


def test_checkpoint_and_csv_get_the_same_mode(tmp_path):
    old = os.umask(0o027)
    try:
        train.main(TINY + ["--steps", "2", "--out", str(tmp_path)])
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in os.listdir(tmp_path)}
    assert modes == {"checkpoint.npz": 0o640, "metrics.csv": 0o640}


def test_csv_is_never_older_than_the_checkpoint_and_rebuilt_on_resume(tmp_path, monkeypatch):
    """A kill between writing the CSV and the checkpoint (simulated: the second checkpoint
    save fails) leaves a CSV ahead of the checkpoint, never behind it; the resume drops the
    rows past the checkpoint and writes them again, once."""
    args = TINY + ["--steps", "6", "--save_every", "2", "--log_every", "1"]
    straight = tmp_path / "straight"
    train.main(args + ["--out", str(straight)])

    split = tmp_path / "split"
    real = checkpoint.save
    calls = []

    def fail_second(path, **kwargs):
        calls.append(kwargs["step"])
        if len(calls) == 2:
            raise OSError(5, "Input/output error (simulated)")
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint, "save", fail_second)
    with pytest.raises(SystemExit) as exc:
        train.main(args + ["--out", str(split)])
    monkeypatch.setattr(checkpoint, "save", real)
    assert exc.value.code == 1
    assert checkpoint.load(split / "checkpoint.npz").step == 2
    assert [r[0] for r in _rows(split)] == ["1", "2", "3", "4"]  # ahead, not behind

    train.main(["--resume", str(split / "checkpoint.npz")])
    assert _rows(split) == _rows(straight)  # the same rows, none twice (timings aside)


def test_a_failed_csv_write_leaves_the_previous_csv_whole(tmp_path, monkeypatch):
    """Regression: the CSV was opened with "w" (cut to nothing) and then written; a failure
    in between left it empty or holding only its header."""
    real = checkpoint.write_atomic
    calls = []

    def fail_third(path, write):
        calls.append(os.path.basename(path))
        if calls.count("metrics.csv") == 3:
            raise OSError(28, "No space left on device (simulated)")
        return real(path, write)

    monkeypatch.setattr(checkpoint, "write_atomic", fail_third)
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--steps", "6", "--log_every", "1", "--out", str(tmp_path)])
    assert exc.value.code == 1
    assert [r[0] for r in _rows(tmp_path)] == ["1", "2"]  # the last complete CSV
    assert sorted(os.listdir(tmp_path)) == ["metrics.csv"]


def test_resuming_a_finished_run_adds_no_rows(tmp_path, capsys):
    first = train.main(TINY + ["--steps", "3", "--out", str(tmp_path)])
    before = _rows(tmp_path)
    assert [r[1] for r in before].count("heldout") == 1
    again = train.main(["--resume", str(tmp_path / "checkpoint.npz")])
    assert _rows(tmp_path) == before  # no second held-out row
    assert again["heldout_accuracy"] == first["heldout_accuracy"]
    assert "already finished" in capsys.readouterr().out


def test_an_unevaluated_finished_run_is_evaluated_on_resume(tmp_path, monkeypatch):
    """Interrupted during the held-out evaluation: the checkpoint holds the last step without
    the held-out row; the resume evaluates, once."""
    import signal

    real = train.evaluate

    def interrupt_then_evaluate(params, run, num_batches, should_stop=None):
        signal.raise_signal(signal.SIGINT)  # main's handler only sets a flag
        return real(params, run, num_batches, should_stop)

    monkeypatch.setattr(train, "evaluate", interrupt_then_evaluate)
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--steps", "3", "--out", str(tmp_path)])
    assert exc.value.code == 128 + signal.SIGINT
    monkeypatch.setattr(train, "evaluate", real)
    assert checkpoint.load(tmp_path / "checkpoint.npz").step == 3
    assert "heldout" not in [r[1] for r in _rows(tmp_path)]
    train.main(["--resume", str(tmp_path / "checkpoint.npz")])
    assert [r[1] for r in _rows(tmp_path)].count("heldout") == 1


def test_resume_drops_a_csv_that_only_holds_rows_past_the_checkpoint(tmp_path, monkeypatch):
    real = checkpoint.save

    def fail_at_4(path, **kwargs):
        if kwargs["step"] == 4:
            raise OSError(5, "Input/output error (simulated)")
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint, "save", fail_at_4)
    with pytest.raises(SystemExit):
        train.main(TINY + ["--steps", "6", "--save_every", "2", "--log_every", "3",
                           "--out", str(tmp_path)])
    monkeypatch.setattr(checkpoint, "save", real)
    assert checkpoint.load(tmp_path / "checkpoint.npz").extra["history"] == []  # step 2
    assert [r[0] for r in _rows(tmp_path)] == ["3"]  # a row past the checkpoint
    train.main(["--resume", str(tmp_path / "checkpoint.npz"), "--stop_after", "2"])
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz"]
