"""The training command: an end-to-end run, exact resume, the held-out stream, the CLI."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gla_np import checkpoint
from gla_np.training import train

ROOT = str(Path(__file__).resolve().parent.parent)  # the repository, for ``python -m``

TINY = ["--seq_len", "16", "--num_pairs", "2", "--vocab_size", "16", "--batch_size", "8",
        "--hidden", "8", "--layers", "1", "--heads", "2", "--head_dim", "4", "--log_every", "5",
        "--eval_batches", "2"]


def _main(argv):
    return train.main(TINY + argv)


def test_end_to_end_run_writes_checkpoint_and_csv_and_learns(tmp_path):
    out = tmp_path / "run"
    result = _main(["--steps", "40", "--warmup", "5", "--lr", "1e-2", "--min_lr", "1e-3",
                    "--out", str(out)])
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "metrics.csv"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(5, 41, 5))
    assert float(train_rows[-1]["loss"]) < float(train_rows[0]["loss"]) - 0.3
    assert rows[-1]["split"] == "heldout"
    assert float(rows[-1]["accuracy"]) == pytest.approx(result["heldout_accuracy"])
    ck = checkpoint.load(out / "checkpoint.npz")
    assert ck.step == 40 and ck.config["hidden"] == 8 and ck.config["task"] == "mqar"
    for name, p in result["params"].items():
        np.testing.assert_array_equal(ck.params[name], p)


def test_resume_is_bit_exact(tmp_path):
    common = ["--steps", "8", "--warmup", "3", "--dropout", "0.1", "--form", "recurrent",
              "--task", "selective_copying", "--num_tokens", "3", "--vocab_size", "8"]
    straight = _main(common + ["--out", str(tmp_path / "straight")])
    first = _main(common + ["--out", str(tmp_path / "split"), "--stop_after", "5"])
    assert first["step"] == 5 and "heldout_accuracy" not in first
    # only --resume and --out: every run option comes back from the checkpoint
    resumed = train.main(["--resume", str(tmp_path / "split" / "checkpoint.npz"),
                          "--out", str(tmp_path / "split"), "--eval_batches", "2"])
    assert resumed["step"] == 8
    for name, p in straight["params"].items():
        assert np.array_equal(resumed["params"][name], p), name  # bit for bit
    for key, s in straight["opt_state"].items():
        assert np.array_equal(resumed["opt_state"][key], s), key
    assert resumed["heldout_accuracy"] == straight["heldout_accuracy"]
    with open(tmp_path / "split" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [5, 8, 8]  # the rows before the stop are kept, then step 8, then held-out


def test_resume_refuses_conflicting_options(tmp_path, capsys):
    _main(["--steps", "3", "--warmup", "0", "--out", str(tmp_path), "--stop_after", "2"])
    with pytest.raises(SystemExit):  # cannot stop before the step the checkpoint is at
        train.main(["--resume", str(tmp_path / "checkpoint.npz"), "--out", str(tmp_path),
                    "--stop_after", "1"])
    assert "stop_after: expected >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        _main(["--resume", str(tmp_path / "checkpoint.npz"), "--gate", "scalar",
               "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--gate 'scalar' (checkpoint: 'vector')" in capsys.readouterr().err


def test_heldout_stream_differs_from_training():
    run = vars(train.build_parser().parse_args(TINY))
    heldout, _ = train.batch(run, train.STREAM_EVAL, 0)
    for step in range(3):
        ids, _ = train.batch(run, train.STREAM_DATA, step)
        assert not np.array_equal(ids, heldout)
    np.testing.assert_array_equal(train.batch(run, train.STREAM_DATA, 2)[0],
                                  train.batch(run, train.STREAM_DATA, 2)[0])


@pytest.mark.parametrize("argv, match", [
    (["--num_pairs", "5"], "seq_len"),
    (["--warmup", "50", "--steps", "10"], "warmup"),
    (["--heads", "0"], "--heads"),
    (["--min_lr", "1.0"], "min_lr"),
    (["--stop_after", "0"], "stop_after"),
    (["--seed", "-1"], "seed"),
    (["--clip", "0"], "clip"),
], ids=["pairs-too-many", "warmup-too-long", "heads0", "min_lr-above-lr", "stop_after0",
        "seed-negative", "clip0"])
def test_bad_options_exit_with_a_message(tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as exc:
        _main(argv + ["--out", str(tmp_path)])
    assert exc.value.code == 2 and match in capsys.readouterr().err


def test_command_line_run_in_a_fresh_process(tmp_path):
    # runs through the BLAS-thread relaunch of ``python -m gla_np.train``
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run([sys.executable, "-m", "gla_np.train", *TINY, "--steps", "3",
                           "--warmup", "1", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, check=True)
    assert "held-out: loss" in done.stdout
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.csv"]


def test_help_lists_every_option_with_text():
    done = subprocess.run([sys.executable, "-m", "gla_np.train", "--help"], capture_output=True,
                          text=True, check=True, env={**os.environ, "PYTHONPATH": ROOT})
    parser = train.build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, action.dest
        assert action.option_strings[0] in done.stdout
    for word in ("--task", "--resume", "--eval_batches", "--log_every", "--gate", "--dtype"):
        assert word in done.stdout
