"""Ctrl-C (SIGINT) and SIGTERM: the run saves its last finished step, says so in one line with
the command that continues it, and exits non-zero without a traceback. No sleeps: the
subprocess tests wait for a progress line, the in-process ones raise the signal from inside the
step (the handler that ``main`` installs only sets a flag, so pytest itself is never hit)."""

import contextlib
import gc
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gla_np import checkpoint, data_parallel
from gla_np.training import train

ROOT = str(Path(__file__).resolve().parent.parent)
TINY = ["--seq_len", "16", "--num_pairs", "2", "--vocab_size", "16", "--batch_size", "8",
        "--hidden", "8", "--layers", "1", "--heads", "2", "--head_dim", "4", "--warmup", "2",
        "--eval_batches", "2", "--threads", "1"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_and_exits_without_traceback(tmp_path, signum):
    # PROCESS_ENV set: no relaunch needed (it would keep the process id anyway)
    env = {**os.environ, **data_parallel.PROCESS_ENV, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gla_np.train", *TINY, "--steps", "100000",
                             "--log_every", "1", "--save_every", "1000", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # wait until three steps are done
            if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 3:
                break
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum
    assert "Traceback" not in err and err.count("\n") == 1, err
    step = checkpoint.load(tmp_path / "checkpoint.npz").step
    assert step >= 3  # the last finished step, not the last periodic save (none yet)
    name = signal.Signals(signum).name
    path = tmp_path / "checkpoint.npz"
    assert err == (f"python -m gla_np.train: interrupted by {name} at step {step} of 100000: "
                   f"saved {path} at step {step}; continue with: python -m gla_np.train "
                   f"--resume {path}\n")


def _signal_at(monkeypatch, step, signum=signal.SIGINT, times=1):
    """Raise ``signum`` (``times`` times) while the data of step ``step`` is being drawn."""
    real = train.batch

    def batch(run, stream, index):
        if stream == train.STREAM_DATA and index == step:
            for _ in range(times):
                signal.raise_signal(signum)
        return real(run, stream, index)

    monkeypatch.setattr(train, "batch", batch)


def test_interrupted_run_resumes_bit_exact(tmp_path, monkeypatch, capsys):
    args = TINY + ["--steps", "8", "--dropout", "0.1", "--save_every", "100"]
    straight = train.main(args + ["--out", str(tmp_path / "straight")])
    _signal_at(monkeypatch, 4)
    with pytest.raises(SystemExit) as exc:
        train.main(args + ["--out", str(tmp_path / "cut")])
    assert exc.value.code == 128 + signal.SIGINT
    assert "interrupted by SIGINT at step 5 of 8" in capsys.readouterr().err
    monkeypatch.undo()
    path = tmp_path / "cut" / "checkpoint.npz"
    assert checkpoint.load(path).step == 5  # the step in progress finished, then the save
    resumed = train.main(["--resume", str(path)])
    for name, p in straight["params"].items():
        assert np.array_equal(resumed["params"][name], p), name


def test_interrupt_before_the_first_step_saves_nothing(tmp_path, monkeypatch, capsys):
    real = train.train

    def train_after_signal(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train", train_after_signal)
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--steps", "4", "--out", str(tmp_path)])
    assert exc.value.code == 130
    assert capsys.readouterr().err == ("python -m gla_np.train: interrupted by SIGINT at step 0 "
                                       "of 4: nothing to save before the first step\n")
    assert os.listdir(tmp_path) == []


def test_a_second_signal_stops_at_once(tmp_path, monkeypatch, capsys):
    _signal_at(monkeypatch, 2, times=2)
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--steps", "6", "--save_every", "1", "--out", str(tmp_path)])
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped at once by a second SIGINT" in err
    assert checkpoint.load(tmp_path / "checkpoint.npz").step == 2  # the last periodic save
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # (no rows logged yet: no CSV)


def test_signal_handlers_are_restored(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    train.main(TINY + ["--steps", "1", "--warmup", "0", "--out", str(tmp_path)])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_signal_during_a_save_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch,
                                                                       capsys):
    train.main(TINY + ["--steps", "6", "--stop_after", "2", "--out", str(tmp_path)])
    before = (tmp_path / "checkpoint.npz").read_bytes()
    real = checkpoint._write_arrays

    def signals_mid_write(file, arrays):
        file.write(b"PK half")
        signal.raise_signal(signal.SIGINT)  # the first: a flag
        signal.raise_signal(signal.SIGINT)  # the second: stop now, inside the save
        return real(file, arrays)

    monkeypatch.setattr(checkpoint, "_write_arrays", signals_mid_write)
    with pytest.raises(SystemExit) as exc:
        train.main(["--resume", str(tmp_path / "checkpoint.npz"), "--save_every", "1"])
    assert exc.value.code == 130 and "second SIGINT" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.csv"]  # no temp file


def test_a_signal_while_the_outcome_is_reported_raises_nothing(tmp_path, monkeypatch, capsys):
    """Regression: a signal burst ended in a traceback after "stopped at once"; here a second
    SIGINT arrives while the first one's outcome is being reported."""
    _signal_at(monkeypatch, 2)
    real_str = train.RunStopped.__str__

    def report_under_fire(self):
        signal.raise_signal(signal.SIGTERM)
        return real_str(self)

    monkeypatch.setattr(train.RunStopped, "__str__", report_under_fire)
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--steps", "6", "--out", str(tmp_path)])
    assert exc.value.code == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted by SIGINT at step 3 of 6" in err


def _assert_sigterm_stops_it_before_training(tmp_path, capsys):
    """Run the command into tmp_path/run: a SIGTERM on the way must stop it before training,
    with status 143, one line saying so, and no folder made."""
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--out", str(tmp_path / "run")])
    assert exc.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err == ("python -m gla_np.train: stopped at once by SIGTERM "
                                       "before training started; nothing was written\n")
    assert not (tmp_path / "run").exists()


def _signal_burst(out, count, gap):
    """Start a long run into ``out``, send ``count`` signals (SIGINT and SIGTERM mixed) ``gap``
    seconds apart once it is past step 3; its (returncode, stderr)."""
    import time

    env = {**os.environ, **data_parallel.PROCESS_ENV, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gla_np.train", *TINY, "--steps", "100000",
                             "--log_every", "1", "--save_every", "2", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 3:
                break
        for i in range(count):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT if i % 3 else signal.SIGTERM)
            if gap:
                time.sleep(gap)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


def test_a_burst_of_signals_exits_in_one_line_without_traceback(tmp_path):
    returncode, err = _signal_burst(tmp_path, 30, gap=0)  # back to back
    assert returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert checkpoint.load(tmp_path / "checkpoint.npz").step >= 2
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.csv"]


def test_a_signal_while_the_run_is_checked_stops_at_once(tmp_path, monkeypatch, capsys):
    # a read that blocks before training (a text or checkpoint that is a device in disguise,
    # like /proc/kmsg) must not make the command deaf: the first signal stops it there
    import time

    from gla_np.training import text

    def blocking_read(run, given=()):
        signal.raise_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # a read the kernel restarts after each signal
            time.sleep(0.001)
        raise AssertionError("the signal did not stop the checks")

    monkeypatch.setattr(text, "run_options", blocking_read)
    _assert_sigterm_stops_it_before_training(tmp_path, capsys)


def test_a_signal_while_the_folder_is_locked_leaves_nothing_behind(tmp_path, monkeypatch,
                                                                   capsys):
    """Regression: a signal that arrived while the output folder's lock was being taken stopped
    the command there, leaving the lock file and the folder it had made."""
    from gla_np import _files

    real = _files.holder_line

    def holder_line_under_fire():  # called with the lock held, just before it is returned
        signal.raise_signal(signal.SIGTERM)
        return real()

    monkeypatch.setattr(_files, "holder_line", holder_line_under_fire)
    _assert_sigterm_stops_it_before_training(tmp_path, capsys)


def test_a_burst_spread_over_the_exit_still_exits_with_the_signals_status(tmp_path):
    # signals a few ms apart keep arriving while the command exits; Python's shutdown restores
    # the default handlers, so one of them used to kill the process (status -2 or -15)
    returncode, err = _signal_burst(tmp_path, 40, gap=0.002)
    assert returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), (returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1, err


def test_a_second_signal_as_a_zip_member_opens_still_stops_with_its_status(tmp_path, monkeypatch,
                                                                           capsys):
    """Regression: a second signal that arrived just as ``np.savez`` opened a member of the
    checkpoint's zip file left the member open; closing the zip then raised a ValueError in its
    place, and the command exited with status 2 ("Exception ignored in ZipFile.__del__")."""
    _signal_at(monkeypatch, 2)  # the first signal: the run stops after step 3 and saves it
    real_open = zipfile.ZipFile.open

    def open_under_fire(self, name, mode="r", *args, **kwargs):
        member = real_open(self, name, mode, *args, **kwargs)
        if mode == "w":
            signal.raise_signal(signal.SIGTERM)  # its handler runs here, before the `with`
        return member

    monkeypatch.setattr(zipfile.ZipFile, "open", open_under_fire)
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--steps", "6", "--out", str(tmp_path)])
    assert exc.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped at once by a second SIGTERM" in err, err
    assert os.listdir(tmp_path) == []  # the save abandoned, its temporary file removed


def test_a_second_signal_anywhere_in_a_save_leaves_whole_files_and_no_other(tmp_path):
    """The second signal delivered at each point of a save (the CSV, then the checkpoint) in
    turn, one save per point: at every function entry and after every call into the operating
    system (``os.open``, ``os.replace``, ...), which is where Python runs a signal's handler.
    The save either finishes or stops with _StopNow (no other error: a zip file half-closed
    raised a ValueError), and the folder holds a whole checkpoint and CSV and nothing else."""
    history = [[1, "train", 1.0, 0.5, 0.1, 1.0, 100.0, 1.0]]
    run = {"task": "mqar", "steps": 4}

    def save_with_a_signal_at(point):
        seen = 0

        def deliver(frame, event, arg):
            nonlocal seen
            if event == "call" or (event == "c_return"
                                   and getattr(arg, "__module__", None) in ("posix", "nt")):
                if seen == point:
                    signal.raise_signal(signal.SIGTERM)
                seen += 1

        with train._stop_signals() as stops:
            signal.raise_signal(signal.SIGINT)  # the first: only a flag
            folder = train.RunFolder(str(tmp_path), run, {}, stops.held)
            sys.setprofile(deliver)
            try:
                folder.save({"w": np.ones(3)}, {}, 2, history, 1.0)
                stopped = False
            except train._StopNow:
                stopped = True
            finally:
                sys.setprofile(None)
        assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.csv"], point
        assert checkpoint.load(tmp_path / "checkpoint.npz", arrays=False).step == 2, point
        return stopped, seen

    save_with_a_signal_at(-1)  # the first save makes the files (and imports what it uses)
    _, points = save_with_a_signal_at(-1)
    assert points > 100, points
    gc.disable()  # no finalizer of a collected object runs (and swallows the signal) by chance
    try:
        assert all(save_with_a_signal_at(point)[0] for point in range(points))
    finally:
        gc.enable()
