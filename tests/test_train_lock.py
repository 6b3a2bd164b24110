"""One writer per output folder: a run holds the folder's lock from before its first check
until it ends; a second run into the folder (new, --overwrite or --resume) is refused naming
the holder; a lock left by a killed run is taken over; two runs started together never lose a
checkpoint; a refused run leaves nothing on disk."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gla_np import _files
from gla_np.training import checkpoint, data_parallel, train
from train_cli import refused, tiny

ROOT = str(Path(__file__).resolve().parent.parent)
TINY = tiny(steps=4)
ENV = {**os.environ, **data_parallel.PROCESS_ENV, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def test_a_run_holds_the_lock_while_it_runs_and_removes_it_after(tmp_path, monkeypatch):
    seen = []
    real = train.evaluate

    def evaluate(*args, **kwargs):  # the lock file is there, locked, during the run
        seen.append(sorted(os.listdir(tmp_path)))
        with pytest.raises(ValueError, match="another run is writing there"):
            _files.lock_folder(str(tmp_path))
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", evaluate)
    train.main(TINY + ["--out", str(tmp_path)])
    assert seen == [[_files.LOCK_NAME, "checkpoint.npz", "metrics.csv"]]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "metrics.csv"]


@pytest.mark.parametrize("how", ["new", "overwrite", "resume"])
def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path, capsys, how):
    """Regression: two runs into one --out both passed the "holds a checkpoint" check; one
    replaced the other's checkpoint, or deleted its temporary file."""
    out = tmp_path / "run"
    if how != "new":
        train.main(TINY + ["--stop_after", "2", "--out", str(out)])
    before = {name: (out / name).read_bytes() for name in os.listdir(out)} if out.exists() else {}
    argv = {"new": TINY + ["--out", str(out)],
            "overwrite": TINY + ["--seed", "1", "--overwrite", "--out", str(out)],
            "resume": ["--resume", str(out / "checkpoint.npz")]}[how]
    with _files.lock_folder(str(out)):  # another run, as far as the folder can tell
        err = refused(argv, capsys)
        assert err.startswith(f"--out {out}: another run is writing there (pid {os.getpid()} "
                              f"on ")
        assert err.endswith("wait for it to end, or choose another --out\n")
        assert {name: (out / name).read_bytes() for name in os.listdir(out)
                if name != _files.LOCK_NAME} == before  # nothing touched
    assert train.main(argv)["step"] == 4  # once the other has ended, the same command runs


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gla_np.train", *tiny(steps=100000),
                             "--log_every", "1", "--save_every", "2", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        for line in proc.stdout:  # wait until a checkpoint has been saved
            if line.startswith("step") and int(line.split()[1].split("/")[0]) >= 3:
                break
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: the lock file stays
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / _files.LOCK_NAME).read_text().startswith(f"pid {proc.pid} on ")
    done = subprocess.run([sys.executable, "-m", "gla_np.train", "--resume",
                           str(tmp_path / "checkpoint.npz"), "--stop_after", "6"],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (f"took over the lock of {tmp_path} from a run that ended without releasing it "
            f"(pid {proc.pid} on ") in done.stdout
    assert checkpoint.load(tmp_path / "checkpoint.npz").step == 6
    assert _files.LOCK_NAME not in os.listdir(tmp_path)


def _start_together(argvs, folder):
    """Fork one child per argv, release them at once, run ``train.main`` in each; returns
    ``[(exit status, stderr)]``. Forking skips Python's start-up, so a round costs little."""
    gate_r, gate_w = os.pipe()
    children = []
    for i, argv in enumerate(argvs):
        err_path = folder.parent / f"{folder.name}.err{i}"
        pid = os.fork()
        if pid == 0:  # the child: wait at the gate, run, report by exit status
            status = 3
            try:
                os.close(gate_w)
                os.read(gate_r, 1)
                with open(os.devnull, "w") as out, open(err_path, "w") as err:
                    sys.stdout, sys.stderr = out, err
                    try:
                        train.main(argv)
                        status = 0
                    except SystemExit as exc:
                        status = exc.code
            finally:
                os._exit(status)
        children.append((pid, err_path))
    os.close(gate_r)
    os.write(gate_w, b"go" * len(argvs))  # one byte each: both start now
    os.close(gate_w)
    results = []
    for pid, err_path in children:
        _, status = os.waitpid(pid, 0)
        results.append((os.waitstatus_to_exitcode(status), err_path.read_text()))
    return results


@pytest.mark.parametrize("extra", [[], ["--overwrite"]], ids=["new", "overwrite"])
def test_two_runs_started_together_never_lose_a_checkpoint(tmp_path, extra):
    refusals = {"another run is writing there", "already holds a checkpoint"}
    for i in range(8):
        out = tmp_path / f"run{i}"
        if extra:  # --overwrite into a folder that holds a run already
            train.main(tiny(steps=1) + ["--warmup", "0", "--seed", "9", "--out", str(out)])
        argvs = [tiny(steps=2) + ["--seed", str(seed), "--log_every", "1", "--out", str(out),
                                  *extra]
                 for seed in (1, 2)]
        results = _start_together(argvs, out)
        winners = [seed for seed, (status, _) in zip((1, 2), results) if status == 0]
        for status, err in results:
            assert status in (0, 2), err
            if status == 2:  # refused in one line, for one of the two reasons
                assert err.count("\n") == 1 and any(r in err for r in refusals), err
        assert winners, results
        ck = checkpoint.load(out / "checkpoint.npz")  # whole, and the run that ended last
        assert ck.step == 2 and ck.config["seed"] in winners
        if not extra:
            assert len(winners) == 1
        rows = (out / "metrics.csv").read_text().splitlines()  # the CSV of the same run
        assert [r.split(",")[:2] for r in rows[1:]] == [["1", "train"], ["2", "train"],
                                                        ["2", "heldout"]]
        assert rows[-1].startswith(f"2,heldout,{ck.extra['history'][-1][2]!r},")
        assert sorted(os.listdir(out)) == ["checkpoint.npz", "metrics.csv"]


# -- a refused run leaves nothing on disk ----------------------------------------------------

def test_a_refused_run_removes_the_folders_it_made(tmp_path, capsys, monkeypatch):
    """Regression: a disk-full refusal left the new --out folder behind."""
    real = train._train_checks.shutil.disk_usage
    monkeypatch.setattr(train._train_checks.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1000))
    out = tmp_path / "a" / "b" / "run"
    assert "only 1,000 bytes free" in refused(TINY + ["--out", str(out)], capsys)
    assert os.listdir(tmp_path) == []


def test_a_too_long_out_leaves_no_folders(tmp_path, capsys):
    """Regression: a 4,000-character --out was refused but left 20 nested folders."""
    out = os.path.join(str(tmp_path), *["d" * 199] * 21)
    err = refused(TINY + ["--out", out], capsys)
    assert err.startswith(f"--out {out}: ") and "too long" in err
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_name_taken_by_a_folder_is_refused_before_training(tmp_path, capsys):
    """Regression: checkpoint.npz being a folder was found only at the first save."""
    (tmp_path / "checkpoint.npz").mkdir()
    err = refused(TINY + ["--out", str(tmp_path)], capsys)
    assert err == (f"--out {tmp_path}: {tmp_path / 'checkpoint.npz'} exists and is not a "
                   f"regular file; the run writes its checkpoint.npz there\n")
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_a_symlinked_lock_file_is_refused(tmp_path, capsys):
    (tmp_path / "elsewhere").write_text("keep me\n")
    os.symlink(tmp_path / "elsewhere", tmp_path / _files.LOCK_NAME)
    err = refused(TINY + ["--out", str(tmp_path)], capsys)
    assert err.startswith(f"--out {tmp_path}: cannot write there")
    assert (tmp_path / "elsewhere").read_text() == "keep me\n"


def test_train_called_from_python_takes_the_lock_too(tmp_path):
    run = {name: value for name, value in vars(train.build_parser().parse_args(TINY)).items()
           if name in train.RUN_OPTIONS}
    with _files.lock_folder(str(tmp_path)):
        with pytest.raises(ValueError, match=r"^out .*: another run is writing there"):
            train.train(run, out=str(tmp_path), threads=1)
    assert train.train(run, out=str(tmp_path), threads=1, log=lambda line: None)["step"] == 4
    assert _files.LOCK_NAME not in os.listdir(tmp_path)


def test_a_folder_that_cannot_be_locked_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(_files.fcntl, "flock", no_locks)
    out = tmp_path / "run"
    err = refused(TINY + ["--out", str(out)], capsys)
    assert err == (f"--out {out}: cannot lock {out / _files.LOCK_NAME} (No locks available); "
                   f"choose another --out\n")
    assert os.listdir(tmp_path) == []


def test_a_folder_made_or_removed_by_another_run_meanwhile_is_no_file(tmp_path, monkeypatch):
    # two runs starting together: between one run's look at the path and its mkdir, the other
    # makes the folder, or makes it and (refused) removes it again; neither is "a file"
    out = tmp_path / "a" / "b"
    real_mkdir, calls = os.mkdir, []

    def other_run_made_it(path, *args):
        calls.append(path)
        if len(calls) == 2:  # the inner folder: the other run made it first
            real_mkdir(path)
            raise FileExistsError(path)
        return real_mkdir(path, *args)

    monkeypatch.setattr(os, "mkdir", other_run_made_it)
    assert _files._make_folders(str(out), "--out") == [str(tmp_path / "a")]
    assert out.is_dir()

    out2, calls[:] = tmp_path / "c", []

    def other_run_made_and_removed_it(path, *args):
        calls.append(path)
        if len(calls) == 1:  # exists for a moment, gone by the time this run looks
            raise FileExistsError(path)
        return real_mkdir(path, *args)

    monkeypatch.setattr(os, "mkdir", other_run_made_and_removed_it)
    assert _files._make_folders(str(out2), "--out") == [str(out2)]
    assert out2.is_dir() and len(calls) == 2
