"""Everything refused before the first step: each option, the output folder, the checkpoint to
resume, sizes that would not fit in memory. One line on stderr naming the option, exit status
2, no traceback, and nothing written (the output folder is not even created)."""

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gla_np import checkpoint, lm
from gla_np.training import _train_checks, train
from train_cli import refused, tiny

ROOT = str(Path(__file__).resolve().parent.parent)
TINY = tiny(steps=4)


BAD = [
    (["--threads", "0"], "--threads"),
    (["--task", "mqar", "--num_tokens", "-1"], "--num_tokens"),  # an option mqar does not use
    (["--task", "copying", "--num_pairs", "-5"], "--num_pairs"),  # one copying does not use
    (["--lr", "1e308"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr"), (["--lr", "-0.1"], "--lr"),
    (["--weight_decay", "inf"], "--weight_decay"), (["--weight_decay", "nan"], "--weight_decay"),
    (["--weight_decay", "-0.1"], "--weight_decay"),
    (["--weight_decay", "1000"], "--weight_decay"),  # lr * wd > 1 flips the weights' sign
    (["--min_lr", "nan"], "--min_lr"), (["--min_lr", "1.0"], "--min_lr"),
    (["--clip", "0"], "--clip"), (["--clip", "inf"], "--clip"), (["--clip", "nan"], "--clip"),
    (["--dropout", "1"], "--dropout"), (["--dropout", "-0.1"], "--dropout"),
    (["--warmup", "-1"], "--warmup"), (["--warmup", "5"], "--warmup"),  # more than 4 steps
    (["--seed", "-1"], "--seed"), (["--steps", "0"], "--steps"),
    (["--batch_size", "0"], "--batch_size"), (["--eval_batches", "0"], "--eval_batches"),
    (["--log_every", "0"], "--log_every"), (["--save_every", "-2"], "--save_every"),
    (["--stop_after", "0"], "--stop_after"), (["--hidden", "0"], "--hidden"),
    (["--layers", "0"], "--layers"), (["--heads", "0"], "--heads"),
    (["--head_dim", "-4"], "--head_dim"), (["--expand", "0"], "--expand"),
    (["--seq_len", "0"], "--seq_len"), (["--vocab_size", "0"], "--vocab_size"),
    (["--num_pairs", "5"], "--seq_len"),  # 16 < 4 * 5
    (["--vocab_size", "5"], "--vocab_size"),  # too few keys for 2 pairs
    (["--task", "copying", "--num_tokens", "9"], "--seq_len"),
    (["--task", "copying", "--vocab_size", "2"], "--vocab_size"),
    (["--form", "parallel", "--seq_len", "4096", "--batch_size", "64"], "--form"),
]


@pytest.mark.parametrize("argv, name", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_is_refused_by_name(tmp_path, capsys, argv, name):
    out = tmp_path / "run"
    assert refused(TINY + argv + ["--out", str(out)], capsys).startswith(name + ":")
    assert not out.exists()  # refused before anything was written


def test_bad_option_in_a_fresh_process_is_one_line_without_traceback(tmp_path):
    for argv in (["--threads", "0"], ["--lr", "1e308"]):  # before and after the relaunch
        done = subprocess.run([sys.executable, "-m", "gla_np.train", *TINY, *argv,
                               "--out", str(tmp_path / "run")], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith(f"python -m gla_np.train: error: {argv[0]}:")


def test_run_options_match_the_checked_keys():
    assert set(train.RUN_OPTIONS) == set(_train_checks.RUN_KEYS)
    parser = train.build_parser()
    for name in train.RUN_OPTIONS:  # every one is an option of the command
        assert parser.get_default(name) is not None, name


# -- the output folder -----------------------------------------------------------------------

def test_out_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    err = refused(TINY + ["--out", str(tmp_path / "taken")], capsys)
    assert err.startswith(f"--out {tmp_path / 'taken'}: is a file")


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    err = refused(TINY + ["--out", str(tmp_path / "taken" / "run")], capsys)
    assert f"{tmp_path / 'taken'} is a file, so no folder can be made under it" in err


def test_out_empty(capsys):
    assert refused(TINY + ["--out", ""], capsys).startswith("--out: expected a folder name")


def test_out_not_writable(tmp_path, capsys, monkeypatch):
    # chmod cannot show this when the tests run as root, so the probe write fails as the
    # system would fail it
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_train_checks.tempfile, "mkstemp", refuse)
    err = refused(TINY + ["--out", str(tmp_path)], capsys)
    assert err == f"--out {tmp_path}: cannot write there (Permission denied)\n"


def test_out_on_a_full_disk(tmp_path, capsys, monkeypatch):
    real = _train_checks.shutil.disk_usage
    monkeypatch.setattr(_train_checks.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1000))
    err = refused(TINY + ["--out", str(tmp_path)], capsys)
    assert err.startswith(f"--out {tmp_path}: only 1,000 bytes free on its disk; a checkpoint "
                          f"needs about")
    assert os.listdir(tmp_path) == []


def test_a_failing_save_mid_run_stops_with_one_line(tmp_path, capsys, monkeypatch):
    real = checkpoint._write_arrays
    calls = []

    def full_on_second(file, arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(file, arrays)

    monkeypatch.setattr(checkpoint, "_write_arrays", full_on_second)
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--save_every", "2", "--out", str(tmp_path)])
    assert exc.value.code == 1
    path = tmp_path / "checkpoint.npz"
    assert capsys.readouterr().err == (
        f"python -m gla_np.train: could not save {path} at step 4 (No space left on device); "
        f"the last good checkpoint {path} (step 2) is kept\n")
    assert checkpoint.load(path).step == 2


# -- the checkpoint to resume ----------------------------------------------------------------

def test_resume_of_a_missing_file(tmp_path, capsys):
    err = refused(["--resume", str(tmp_path / "nope.npz")], capsys)
    assert err == f"--resume {tmp_path / 'nope.npz'}: no such file\n"


def test_resume_of_a_folder(tmp_path, capsys):
    err = refused(["--resume", str(tmp_path)], capsys)
    assert err.startswith(f"--resume {tmp_path}: is a folder; expected a checkpoint file such "
                          f"as {tmp_path / 'checkpoint.npz'}")


def test_resume_of_a_file_that_is_no_checkpoint(tmp_path, capsys):
    """Regression: the message for --resume metrics.csv came from np.load and suggested
    allow_pickle=True."""
    (tmp_path / "metrics.csv").write_text("step,split\n1,train\n")
    err = refused(["--resume", str(tmp_path / "metrics.csv")], capsys)
    assert err.startswith(f"checkpoint {tmp_path / 'metrics.csv'}: not a checkpoint")
    assert "pickle" not in err


# -- memory ----------------------------------------------------------------------------------

def test_sizes_that_cannot_fit_are_refused_with_the_estimate(tmp_path, capsys):
    err = refused(TINY + ["--batch_size", "100000", "--seq_len", "100000", "--out",
                           str(tmp_path / "run")], capsys)
    assert err.startswith("--batch_size 100000 with --seq_len 100000: one training step needs "
                          "about ")
    assert "TiB of memory" in err and "lower --batch_size or --seq_len" in err
    assert not (tmp_path / "run").exists()


def test_memory_refusal_follows_the_memory_available(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_train_checks, "available_memory", lambda: 1000)
    assert "more than the 1,000 bytes available" in refused(TINY + ["--out", str(tmp_path)],
                                                              capsys)
    monkeypatch.setattr(_train_checks, "available_memory", lambda: None)  # unknown: no check
    assert train.main(TINY + ["--out", str(tmp_path)])["step"] == 4


@pytest.mark.parametrize("extra", [
    [], ["--form", "parallel"], ["--form", "recurrent", "--layers", "2"],
    ["--dtype", "float64", "--seq_len", "40", "--vocab_size", "64", "--expand", "4"],
    ["--task", "copying", "--vocab_size", "2048"],
], ids=["chunk", "parallel", "recurrent-2-layers", "float64-wide", "copying-vocab-2048"])
def test_step_memory_estimate_is_close_to_the_measured_peak(extra):
    run = vars(train.build_parser().parse_args(
        ["--batch_size", "8", "--seq_len", "32", "--hidden", "32", "--heads", "2",
         "--head_dim", "16", "--num_pairs", "4", *extra]))
    config = train.model_config(run)
    params = lm.init_params(config, run["vocab_size"], np.random.default_rng(0))
    ids, targets = train.batch(run, train.STREAM_DATA, 0)
    tracemalloc.start()
    try:
        lm.loss_and_grads(params, ids, targets, config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    peak += 5 * sum(p.nbytes for p in params.values())  # what the estimate adds for AdamW
    assert 0.5 < _train_checks.step_memory(run) / peak < 2


def test_train_called_from_python_names_a_missing_option(tmp_path):
    run = {name: value for name, value in vars(train.build_parser().parse_args(TINY)).items()
           if name in train.RUN_OPTIONS and name != "eval_batches"}
    with pytest.raises(ValueError, match=r"^run: .* missing \['eval_batches'\]"):
        train.train(run, out=str(tmp_path))


# -- cheapest first, one line, nothing left --------------------------------------------------

@pytest.mark.parametrize("argv, fragment", [
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--task", "poetry"], "argument --task: invalid choice: 'poetry'"),
    (["--colour", "red"], "unrecognized arguments: --colour red"),
], ids=["not-an-int", "bad-choice", "unknown-option"])
def test_argparse_errors_are_one_line_pointing_to_help(capsys, argv, fragment):
    """Regression: argparse printed its 21-line usage block before the error."""
    err = refused(TINY + argv, capsys)
    assert fragment in err and err.endswith("; see --help\n")


def test_a_history_too_long_for_a_checkpoint_is_refused_up_front(tmp_path, capsys):
    """Regression: --steps 10**30 was refused as a disk-space problem, after making --out."""
    out = tmp_path / "run"
    err = refused(TINY + ["--steps", str(10 ** 30), "--out", str(out)], capsys)
    assert err.startswith(f"--steps {10 ** 30:,} with --log_every 25: the metrics history of ")
    assert "raise --log_every or lower --steps" in err
    assert not out.exists()


def test_a_huge_seq_len_is_refused_before_any_sequence_is_built(tmp_path, capsys, monkeypatch):
    """Regression: --seq_len 10**9 drew a sequence of that length (to check the task's sizes)
    before the memory check refused it."""
    built = []
    monkeypatch.setattr(_train_checks.tasks, "make_batch",
                        lambda *args, **kwargs: built.append(kwargs) or 1 / 0)
    monkeypatch.setattr(_train_checks, "available_memory", lambda: 2 ** 30)
    err = refused(TINY + ["--seq_len", str(10 ** 9), "--out", str(tmp_path / "run")], capsys)
    assert err.startswith(f"--batch_size 8 with --seq_len {10 ** 9}: one training step needs ")
    assert built == [] and not (tmp_path / "run").exists()


def test_a_failed_csv_write_names_the_step_it_happened_at(tmp_path, capsys, monkeypatch):
    """Regression: a write failure at step 60 was reported "at step 56" (the last logged row)."""
    real = checkpoint.write_atomic
    calls = []

    def fail_second_csv(path, write):
        calls.append(os.path.basename(path))
        if calls.count("metrics.csv") == 2:  # at the save of step 3; the last row is step 2
            raise OSError(28, "No space left on device (simulated)")
        return real(path, write)

    monkeypatch.setattr(checkpoint, "write_atomic", fail_second_csv)
    with pytest.raises(SystemExit):
        train.main(TINY + ["--log_every", "2", "--save_every", "3", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / 'metrics.csv'} at step 3 (No space" in err


def test_a_huge_layer_count_is_refused_by_arithmetic(tmp_path, capsys, monkeypatch):
    """Regression: the memory estimate listed every layer's parameters, so --layers 10**9 ran
    for minutes (deaf to a first SIGTERM) before the refusal."""
    listed = []
    real = _train_checks.model.param_shapes
    monkeypatch.setattr(_train_checks.model, "param_shapes",
                        lambda config: listed.append(config.num_layers) or real(config))
    monkeypatch.setattr(_train_checks, "available_memory", lambda: 2 ** 34)
    err = refused(TINY + ["--layers", str(10 ** 9), "--out", str(tmp_path / "run")], capsys)
    assert err.startswith("--batch_size 8 with --seq_len 16: one training step needs about ")
    assert max(listed) <= 2  # one and two layers, extended by arithmetic
    run = vars(train.build_parser().parse_args(TINY + ["--layers", "3"]))
    config = train.model_config(run)
    params = lm.init_params(config, run["vocab_size"], np.random.default_rng(0))
    assert _train_checks.param_bytes(run) == sum(p.nbytes for p in params.values())
