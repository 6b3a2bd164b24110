"""Checkpoints: round trip, atomic save, and clear errors on bad files."""

import os

import numpy as np
import pytest

from gla_np import checkpoint, optim

CONFIG = {"hidden_size": 8, "num_layers": 1, "gate": "vector", "seed": 3}


def _params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {"layers.0.w": rng.standard_normal((3, 4)).astype(dtype),
            "layers.0.b": rng.standard_normal(4).astype(dtype)}


def _save(path, seed=0, step=7):
    params = _params(seed)
    opt = optim.AdamW()
    state = opt.init(params)
    grads = {k: np.ones_like(v) for k, v in params.items()}
    params, state = opt.step(params, grads, state, 1e-3)
    checkpoint.save(path, config=CONFIG, params=params, opt_state=state, step=step,
                    extra={"history": [[1, 0.5]]})
    return params, state


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt.npz"
    params, state = _save(path)
    ck = checkpoint.load(path, config=CONFIG, params_like=params, opt_state_like=state)
    assert ck.config == CONFIG and ck.step == 7 and ck.extra == {"history": [[1, 0.5]]}
    for src, back in ((params, ck.params), (state, ck.opt_state)):
        assert src.keys() == back.keys()
        for k in src:
            assert back[k].dtype == src[k].dtype
            np.testing.assert_array_equal(back[k], src[k])
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind


def test_failed_save_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    params, _ = _save(path, seed=0)
    before = path.read_bytes()

    def write_half_then_fail(file, arrays):
        file.write(b"PK\x03\x04 half a zip file")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(checkpoint, "_write_arrays", write_half_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        _save(path, seed=1)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # the temporary file was removed
    np.testing.assert_array_equal(checkpoint.load(path).params["layers.0.w"],
                                  params["layers.0.w"])


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty"])
def test_damaged_file_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "ckpt.npz"
    _save(path)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "garble":  # flip bytes inside the stored arrays: the zip CRC catches it
        mid = len(data) // 2
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 16]) + data[mid + 16:]
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(ValueError, match="ckpt.npz"):
        checkpoint.load(path)


def test_missing_entries(tmp_path):
    path = tmp_path / "ckpt.npz"
    params, state = _save(path)
    with pytest.raises(ValueError, match="param/layers.1.w"):
        checkpoint.load(path, params_like={**params, "layers.1.w": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected entries \['param/layers.0.b'\]"):
        checkpoint.load(path, params_like={"layers.0.w": params["layers.0.w"]})

    entries = dict(np.load(path, allow_pickle=False))
    del entries["step"]
    np.savez(tmp_path / "nostep.npz", **entries)
    with pytest.raises(ValueError, match="'step'"):
        checkpoint.load(tmp_path / "nostep.npz")
    del entries["config"]
    np.savez(tmp_path / "noconfig.npz", **entries)
    with pytest.raises(ValueError, match="'config'"):
        checkpoint.load(tmp_path / "noconfig.npz")


def test_shape_and_dtype_mismatch(tmp_path):
    path = tmp_path / "ckpt.npz"
    params, state = _save(path)
    wrong_shape = {**params, "layers.0.w": np.zeros((4, 3), np.float32)}
    template = {k: v.copy() for k, v in wrong_shape.items()}
    with pytest.raises(ValueError, match=r"param/layers.0.w.*\(3, 4\).*\(4, 3\)"):
        checkpoint.load(path, params_like=wrong_shape)
    for k in template:  # the template was not touched
        np.testing.assert_array_equal(wrong_shape[k], template[k])
    with pytest.raises(ValueError, match="opt/m/layers.0.b"):
        checkpoint.load(path, opt_state_like={**state, "m/layers.0.b": np.zeros(4)})  # float64


def test_config_mismatch(tmp_path):
    path = tmp_path / "ckpt.npz"
    _save(path)
    with pytest.raises(ValueError,
                       match="config mismatch.*gate: saved 'vector', expected 'scalar'"):
        checkpoint.load(path, config={**CONFIG, "gate": "scalar"})
    with pytest.raises(ValueError, match="config mismatch.*lr"):
        checkpoint.load(path, config={**CONFIG, "lr": 0.1})


def test_save_validates_and_loads_without_pickle(tmp_path):
    with pytest.raises(ValueError, match="step"):
        checkpoint.save(tmp_path / "a.npz", config=CONFIG, params=_params(), step=-1)
    with pytest.raises(ValueError, match="config"):
        checkpoint.save(tmp_path / "a.npz", config={"f": object()}, params=_params())
    with pytest.raises(ValueError, match="param"):
        checkpoint.save(tmp_path / "a.npz", config=CONFIG,
                        params={"w": np.array([object()], dtype=object)})
    assert os.listdir(tmp_path) == []
    # a file that needs pickle to load (an object array) is refused as unreadable
    np.savez(tmp_path / "pickled.npz", format=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz"):
        checkpoint.load(tmp_path / "pickled.npz")


# -- leftovers and file modes ----------------------------------------------------------------

def test_a_killed_save_leaves_a_temp_file_that_the_next_save_removes(tmp_path):
    """SIGKILL in the middle of a save (no cleanup can run) leaves our temporary file; the next
    save of the same file removes it, so leftovers never pile up, and files of any other naming
    are left alone."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "ckpt.npz"
    _save(path)
    before = path.read_bytes()
    root = str(Path(__file__).resolve().parent.parent)
    script = ("import os, signal, sys\n"
              "from gla_np import checkpoint\n"
              "def die(f, arrays):\n"
              "    f.write(b'PK half a zip'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
              "checkpoint._write_arrays = die\n"
              "checkpoint.save(sys.argv[1], config={}, params={'w': [1.0]})\n")
    for _ in range(2):  # two killed saves: the second removes the first one's leftover
        done = subprocess.run([sys.executable, "-c", script, str(path)],
                              env={**os.environ, "PYTHONPATH": root})
        assert done.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".ckpt.npz.")
    assert path.read_bytes() == before  # the kill never touched the checkpoint itself
    others = [".other.npz.abcd1234.tmp", "ckpt.npz.tmp", ".ckpt.npz.notours.tmp", "notes.txt"]
    for name in others:
        (tmp_path / name).write_text("not ours")
    _save(path, seed=1)
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.npz", *others])


def test_checkpoint_gets_the_mode_of_an_ordinary_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        _save(tmp_path / "ckpt.npz")
        checkpoint.write_atomic(tmp_path / "notes.csv", lambda f: f.write(b"a,b\n"))
        with open(tmp_path / "plain.txt", "w") as f:  # what open() gives a new file
            f.write("x")
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777
             for name in ("ckpt.npz", "notes.csv", "plain.txt")}
    assert modes == {"ckpt.npz": 0o644, "notes.csv": 0o644, "plain.txt": 0o644}
    assert (tmp_path / "notes.csv").read_bytes() == b"a,b\n"


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.csv"
    checkpoint.write_atomic(path, lambda f: f.write(b"old\n"))

    def fail(f):
        f.write(b"new, half")
        raise OSError(28, "No space left on device (simulated)")

    with pytest.raises(OSError, match="simulated"):
        checkpoint.write_atomic(path, fail)
    assert path.read_bytes() == b"old\n" and os.listdir(tmp_path) == ["metrics.csv"]


@pytest.mark.parametrize("entry", ["config", "extra"])
def test_config_or_extra_that_is_not_a_json_object(tmp_path, entry):
    """Regression: a hand-edited config holding a JSON list loaded fine, and comparing it with
    the expected config raised AttributeError ('list' object has no attribute 'get')."""
    path = tmp_path / "ckpt.npz"
    _save(path)
    entries = dict(np.load(path, allow_pickle=False))
    entries[entry] = np.array("[1, 2]")
    np.savez(path, **entries)
    with pytest.raises(ValueError, match=rf"entry '{entry}' should hold a JSON object, got list"):
        checkpoint.load(path, config=CONFIG)
