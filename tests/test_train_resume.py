"""Resuming: every option that shapes the run comes back from the checkpoint; an option given
explicitly must agree with it (even when it equals its default); a hand-edited or damaged
config is a ValueError naming the key; no run silently replaces another's checkpoint."""

import json
import os

import numpy as np
import pytest

from gla_np import checkpoint
from gla_np.training import train
from train_cli import refused, tiny

TINY = tiny(steps=6)


@pytest.fixture
def stopped(tmp_path):
    """A run stopped at step 3 of 6 with --lr 0.01, no short convolution, 2 held-out batches."""
    train.main(TINY + ["--lr", "0.01", "--no-short_conv", "--stop_after", "3",
                       "--out", str(tmp_path / "a")])
    return tmp_path / "a" / "checkpoint.npz"


def test_every_run_option_is_stored(stopped):
    config = checkpoint.load(stopped).config
    assert set(config) == set(train.RUN_OPTIONS)
    assert config["eval_batches"] == 2 and config["lr"] == 0.01 and not config["short_conv"]


def test_explicit_option_equal_to_its_default_is_still_checked(stopped, capsys):
    """Regression: only options differing from their defaults were compared, so --lr 0.0015
    (the default) was silently replaced by the checkpoint's 0.01."""
    err = refused(["--resume", str(stopped), "--lr", "0.0015"], capsys)
    assert "--lr 0.0015 (checkpoint: 0.01)" in err
    err = refused(["--resume", str(stopped), "--eval_batches", "16"], capsys)
    assert "--eval_batches 16 (checkpoint: 2)" in err
    err = refused(["--resume", str(stopped), "--short_conv"], capsys)  # True: the default
    assert "--short_conv True (checkpoint: False)" in err


def test_explicit_options_that_agree_are_accepted(stopped):
    result = train.main(["--resume", str(stopped), "--lr", "0.01", "--eval_batches", "2",
                         "--no-short_conv", "--seed", "0"])
    assert result["step"] == 6


def test_resume_without_out_writes_next_to_the_checkpoint(stopped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default --out (runs/latest) would go
    train.main(["--resume", str(stopped)])
    assert not (tmp_path / "runs").exists()
    assert checkpoint.load(stopped).step == 6


def test_a_new_run_never_replaces_a_checkpoint(stopped, capsys):
    folder = stopped.parent
    before = stopped.read_bytes()
    err = refused(TINY + ["--seed", "1", "--out", str(folder)], capsys)
    assert err == (f"--out {folder}: already holds a checkpoint "
                   f"({stopped}); continue that run with --resume {stopped}, or replace it "
                   f"with --overwrite\n")
    assert stopped.read_bytes() == before


def test_overwrite_starts_afresh(stopped):
    folder = stopped.parent
    train.main(TINY + ["--seed", "1", "--stop_after", "2", "--out", str(folder),
                       "--overwrite"])
    ck = checkpoint.load(stopped)
    assert ck.step == 2 and ck.config["seed"] == 1
    with open(folder / "metrics.csv") as f:
        assert [line.split(",")[0] for line in f][1:] == ["2"]  # the old rows are gone


def test_resume_into_a_folder_holding_another_run_is_refused(stopped, tmp_path, capsys):
    train.main(TINY + ["--stop_after", "1", "--out", str(tmp_path / "b")])
    err = refused(["--resume", str(stopped), "--out", str(tmp_path / "b")], capsys)
    assert "already holds a checkpoint" in err and "--overwrite" in err


def test_log_and_save_intervals_come_back_and_may_change(tmp_path, monkeypatch):
    train.main(TINY + ["--stop_after", "2", "--log_every", "1", "--save_every", "1",
                       "--out", str(tmp_path)])
    saved = []
    real = checkpoint.save
    monkeypatch.setattr(checkpoint, "save",
                        lambda path, **kw: (saved.append(kw["step"]), real(path, **kw))[1])
    train.main(["--resume", str(tmp_path / "checkpoint.npz"), "--stop_after", "4"])
    assert saved == [3, 4]  # save_every 1 came back
    train.main(["--resume", str(tmp_path / "checkpoint.npz"), "--save_every", "5"])
    assert saved == [3, 4, 5, 6, 6]  # now every 5 steps and at the end


# -- hand-edited or damaged checkpoints ------------------------------------------------------

def _edit(path, config=None, step=None, extra=None, params=None, opt_state=None):
    ck = checkpoint.load(path)
    checkpoint.save(path, config=ck.config if config is None else config,
                    params=ck.params if params is None else params,
                    opt_state=ck.opt_state if opt_state is None else opt_state,
                    step=ck.step if step is None else step,
                    extra=ck.extra if extra is None else extra)
    return ck


EDITS = {
    "steps-as-text": (lambda c: {**c, "steps": "6"}, "config['steps']: expected an integer"),
    "lr-null": (lambda c: {**c, "lr": None}, "config['lr']: expected a finite number"),
    "lr-huge": (lambda c: {**c, "lr": 1e308}, "config['lr']: expected a number in (0, 1]"),
    "gate-unknown": (lambda c: {**c, "gate": "wide"}, "config['gate']: expected one of"),
    "short_conv-int": (lambda c: {**c, "short_conv": 0}, "config['short_conv']: expected true"),
    "hidden-float": (lambda c: {**c, "hidden": 8.0}, "config['hidden']: expected an integer"),
    "hidden-missing": (lambda c: {k: v for k, v in c.items() if k != "hidden"},
                       "config has no 'hidden'"),
    "unknown-key": (lambda c: {**c, "colour": "red"}, "config has an unknown key 'colour'"),
    "not-a-dict": (lambda c: [1, 2], "entry 'config' should hold a JSON object, got list"),
    "warmup-beyond": (lambda c: {**c, "warmup": 99}, "config['warmup']: expected 0 <= warmup"),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_edited_config_is_a_value_error_naming_the_key(stopped, capsys, edit):
    change, message = EDITS[edit]
    entries = dict(np.load(stopped, allow_pickle=False))  # (save() checks its config itself)
    entries["config"] = np.array(json.dumps(change(json.loads(str(entries["config"])))))
    np.savez(stopped, **entries)
    err = refused(["--resume", str(stopped)], capsys)
    assert err.startswith(f"checkpoint {stopped}: {message}")


def test_step_beyond_steps(stopped, capsys):
    _edit(stopped, step=99)
    err = refused(["--resume", str(stopped)], capsys)
    assert err.endswith(f"checkpoint {stopped}: step 99 is beyond config['steps'] = 6\n")


@pytest.mark.parametrize("history, fragment", [
    ("rows", "extra['history']"), ([[1, "train"]], "extra['history']"),
    ([["1", "train", 0, 0, 0, 0, 0, 0]], "extra['history']"),
], ids=["text", "short-row", "step-as-text"])
def test_edited_history(stopped, capsys, history, fragment):
    ck = checkpoint.load(stopped)
    _edit(stopped, extra={**ck.extra, "history": history})
    assert fragment in refused(["--resume", str(stopped)], capsys)


def test_edited_intervals_and_elapsed(stopped, capsys):
    ck = checkpoint.load(stopped)
    _edit(stopped, extra={**ck.extra, "save_every": 0})
    assert "extra['save_every']: expected an integer >= 1" in refused(
        ["--resume", str(stopped)], capsys)
    _edit(stopped, extra={**ck.extra, "elapsed_sec": "soon"})
    assert "extra['elapsed_sec']" in refused(["--resume", str(stopped)], capsys)


def test_optimizer_step_and_params_checked(stopped, capsys):
    ck = _edit(stopped, opt_state=None)
    _edit(stopped, opt_state={**ck.opt_state, "step": np.array(1, dtype=np.int64)})
    assert "entry 'opt/step' is 1, expected the checkpoint's step 3" in refused(
        ["--resume", str(stopped)], capsys)
    name = next(iter(ck.params))
    _edit(stopped, opt_state=ck.opt_state,
          params={**ck.params, name: np.full_like(ck.params[name], np.nan)})
    assert f"entry 'param/{name}' holds nan or inf" in refused(["--resume", str(stopped)],
                                                                capsys)
    assert os.path.isfile(stopped)
