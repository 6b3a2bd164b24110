"""Hostile checkpoints: a file made to hurt is refused in one line, before it costs memory.

Each member of the .npz is checked before its data is read: a stored (uncompressed) ``.npy``,
a plain dtype, a shape whose bytes are exactly what the member stores, JSON nested no deeper
than a checkpoint needs, and a regular file (a FIFO is refused, not waited on). The zip bomb
and the huge shape run in a process limited to 3 GiB of address space, so a check that came
after the allocation would fail them."""

import io
import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from gla_np.training import checkpoint, data_parallel, train
from train_cli import refused, tiny

ROOT = str(Path(__file__).resolve().parent.parent)
ENV = {**os.environ, **data_parallel.PROCESS_ENV, "PYTHONPATH": ROOT}
LIMIT = 3 * 2 ** 30  # bytes of address space for the subprocess tests


@pytest.fixture
def saved(tmp_path):
    """A real run's checkpoint, stopped at step 2 of 4."""
    train.main(tiny(steps=4) + ["--stop_after", "2", "--out", str(tmp_path / "run")])
    return tmp_path / "run" / "checkpoint.npz"


def _members(path):
    """``{member name: bytes}`` of a zip file, in order."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _npy(array=None, header=None, data=b""):
    """A .npy file's bytes: of ``array``, or a ``header`` dict followed by raw ``data``."""
    f = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(data)
    return f.getvalue()


def _write_zip(path, members):
    """Write a zip by hand: ``members`` maps a name to bytes (stored) or to a tuple
    ``(raw deflate stream, declared size)`` (deflated, CRC left 0: never read that far)."""
    blobs, central, offset = [], [], 0
    for name, member in members.items():
        name_b = name.encode()
        if isinstance(member, tuple):
            data, size, method, crc = member[0], member[1], 8, 0
        else:
            data, size, method, crc = member, len(member), 0, zlib.crc32(member)
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data),
                            size, len(name_b), 0) + name_b
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0,
                                   crc, len(data), size, len(name_b), 0, 0, 0, 0, 0, offset)
                       + name_b)
        blobs += [local, data]
        offset += len(local) + len(data)
    directory = b"".join(central)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(directory),
                      offset, 0)
    Path(path).write_bytes(b"".join(blobs) + directory + end)


def _first_param(members):
    return next(name for name in members if name.startswith("param/"))


def _bomb(size):
    """A raw deflate stream of a .npy header claiming ``size`` bytes of float32 zeros, about a
    thousand times smaller than what it inflates to."""
    header = _npy(header={"descr": "<f4", "fortran_order": False, "shape": (0,)})
    count = (size - len(header)) // 4
    header = _npy(header={"descr": "<f4", "fortran_order": False, "shape": (count,)})
    chunk = 2 ** 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)  # the same bytes each time
    tail = c.flush(zlib.Z_FINISH)
    chunks = -(-count * 4 // chunk)
    return head + zeros * chunks + tail, len(header) + chunks * chunk


def _under_limit(argv):
    """Run ``python -m gla_np.train argv`` with at most 3 GiB of address space."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    return subprocess.run([sys.executable, "-m", "gla_np.train", *argv], capture_output=True,
                          text=True, env=ENV, preexec_fn=limit, timeout=120)


def test_a_zip_bomb_is_refused_under_a_memory_limit(saved):
    """Regression: a 1.7 MB file with a member deflated from 1.6 GB resumed normally, having
    allocated the 1.6 GB; here the member inflates to 3.5 GiB, more than the process may map."""
    members = _members(saved)
    name = _first_param(members)
    members[name] = _bomb(int(3.5 * 2 ** 30))
    _write_zip(saved, members)
    assert saved.stat().st_size < 5 * 2 ** 20
    done = _under_limit(["--resume", str(saved)])
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr == (f"python -m gla_np.train: error: checkpoint {saved}: member "
                           f"{name!r} is compressed; checkpoints store their arrays "
                           f"uncompressed\n")


@pytest.mark.parametrize("how", ["resume", "load"])
def test_a_huge_shape_is_refused_under_a_memory_limit(saved, how):
    """Regression: a header claiming shape (10**12,) raised MemoryError "3.64 TiB"."""
    members = _members(saved)
    name = _first_param(members)
    members[name] = _npy(header={"descr": "<f4", "fortran_order": False,
                                 "shape": (10 ** 12,)}, data=bytes(64))
    _write_zip(saved, members)
    if how == "resume":
        done = _under_limit(["--resume", str(saved)])
    else:
        code = ("import sys; from gla_np.training import checkpoint\n"
                "try:\n    checkpoint.load(sys.argv[1])\n"
                "except ValueError as err:\n    sys.exit(f'refused: {err}')\n")
        done = subprocess.run([sys.executable, "-c", code, str(saved)], capture_output=True,
                              text=True, env=ENV, timeout=120,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS,
                                                                    (LIMIT, LIMIT)))
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    if how == "resume":  # the run's template says what the entry's shape must be
        assert done.stderr.startswith(f"python -m gla_np.train: error: checkpoint {saved}: "
                                      f"entry '{name[:-4]}' has shape (1000000000000,)")
    else:  # no template: the bytes the member stores are the bound
        assert done.stderr.startswith(f"refused: checkpoint {saved}: entry '{name[:-4]}': its "
                                      f"header claims shape (1000000000000,) of float32 "
                                      f"(4,000,000,000,000 bytes), but it stores 64")


def test_a_member_that_is_no_npy_is_refused(saved):
    """Regression: a member without .npy came back as bytes: AttributeError."""
    members = _members(saved)
    members["config"] = b'{"lr": 1}'
    del members["config.npy"]
    _write_zip(saved, members)
    with pytest.raises(ValueError, match=r"^checkpoint .*: member 'config' is not an array "
                                         r"\(\.npy\); not a checkpoint$"):
        checkpoint.load(saved)


def test_an_unexpected_entry_is_refused(saved):
    members = _members(saved)
    members["notes.npy"] = _npy(np.arange(3))
    _write_zip(saved, members)
    with pytest.raises(ValueError, match=r"unexpected entries \['notes'\]"):
        checkpoint.load(saved)


@pytest.mark.parametrize("entry", ["config", "extra"])
def test_deeply_nested_json_is_refused(saved, entry):
    """Regression: config JSON nested 100,000 deep raised RecursionError."""
    members = _members(saved)
    members[f"{entry}.npy"] = _npy(np.array("[" * 100_000 + "]" * 100_000))
    _write_zip(saved, members)
    with pytest.raises(ValueError, match=f"^checkpoint .*: {entry}: JSON nested deeper than "
                                         f"32 levels$"):
        checkpoint.load(saved)


def test_an_object_or_oversized_text_entry_is_refused(saved):
    members = _members(saved)
    members["step.npy"] = _npy(header={"descr": "|O", "fortran_order": False, "shape": ()},
                               data=b"\x80\x04N.")
    _write_zip(saved, members)
    with pytest.raises(ValueError, match="entry 'step': dtype object is not a plain number"):
        checkpoint.load(saved)
    members["step.npy"] = _npy(np.array(2))
    members["extra.npy"] = _npy(header={"descr": f"<U{2 ** 27}", "fortran_order": False,
                                        "shape": ()}, data=bytes(64))  # refused by its header
    _write_zip(saved, members)
    with pytest.raises(ValueError, match="entry 'extra' holds 536,870,912 bytes, more than "):
        checkpoint.load(saved)


def test_a_fifo_as_resume_is_refused_at_once(tmp_path):
    """Regression: a FIFO as --resume hung, swallowing SIGTERM."""
    fifo = tmp_path / "checkpoint.npz"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "gla_np.train", "--resume", str(fifo)],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"python -m gla_np.train: error: --resume {fifo}: is not a regular "
                           f"file (a FIFO or a device?); expected a checkpoint file\n")
    with pytest.raises(ValueError, match=r"^checkpoint .*: is a FIFO, expected a regular file"):
        checkpoint.load(fifo)  # the library refuses it too (opened without blocking)


# -- resume checks every stored value it uses ------------------------------------------------

def _edit_extra(path, change):
    members = _members(path)
    extra = json.loads(str(np.load(io.BytesIO(members["extra.npy"]))))
    members["extra.npy"] = _npy(np.array(json.dumps(change(extra))))
    _write_zip(path, members)


@pytest.fixture
def finished(tmp_path):
    train.main(tiny(steps=2) + ["--out", str(tmp_path / "done")])
    return tmp_path / "done" / "checkpoint.npz"


@pytest.mark.parametrize("value", [{}, None, [1], "abc", float("nan"), -1.0, 2.0],
                         ids=["object", "null", "list", "text", "nan", "negative", "above-1"])
def test_a_damaged_heldout_row_is_refused_by_name(finished, capsys, value):
    """Regression: a finished run's held-out accuracy of {}, null or [1] raised TypeError,
    "abc" "Unknown format code 'f'"."""
    def change(extra):
        extra["history"][-1][3] = value  # the held-out row's accuracy
        return extra

    _edit_extra(finished, change)
    err = refused(["--resume", str(finished)], capsys)
    index = len(checkpoint.load(finished).extra["history"]) - 1
    assert err.startswith(f"checkpoint {finished}: extra['history'][{index}]: accuracy: "
                          f"expected a ")


@pytest.mark.parametrize("key, value, message", [
    ("m", np.nan, "holds nan or inf"),
    ("v", -1.0, "holds negative values; AdamW's second moment is an average of squares"),
], ids=["m-nan", "v-negative"])
def test_damaged_optimizer_moments_are_refused(saved, capsys, key, value, message):
    """Regression: m NaN or v < 0 was accepted and reported later as a divergence."""
    members = _members(saved)
    name = next(n for n in members if n.startswith(f"opt/{key}/"))
    array = np.load(io.BytesIO(members[name]))
    array.flat[0] = value
    members[name] = _npy(array)
    _write_zip(saved, members)
    err = refused(["--resume", str(saved)], capsys)
    assert err == f"checkpoint {saved}: entry '{name[:-4]}' {message}" + (
        ", >= 0\n" if key == "v" else "\n")


def test_overlapping_members_are_refused(tmp_path):
    """Member 'a' stores, as its data, member 'b' whole (its local header and its array): both
    are valid, and reading both would allocate more than the file, quadratically so with more
    nesting. The members' stored bytes may not add up to more than the file."""
    b_npy = _npy(np.zeros(1000, np.float32))
    b_local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(b_npy),
                          len(b_npy), len(b_npy), len("b.npy"), 0) + b"b.npy" + b_npy
    a_npy = _npy(header={"descr": "|u1", "fortran_order": False, "shape": (len(b_local),)},
                 data=b_local)
    a_local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(a_npy),
                          len(a_npy), len(a_npy), len("a.npy"), 0) + b"a.npy" + a_npy
    b_offset = len(a_local) - len(b_local)
    central = b""
    for name, data, offset in (("a.npy", a_npy, 0), ("b.npy", b_npy, b_offset)):
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0,
                               zlib.crc32(data), len(data), len(data), len(name), 0, 0, 0, 0, 0,
                               offset) + name.encode()
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 2, 2, len(central), len(a_local), 0)
    path = tmp_path / "nested.npz"
    path.write_bytes(a_local + central + end)
    assert len(np.load(path)["b"]) == 1000  # NumPy reads both members
    with pytest.raises(ValueError, match=r"its members claim more bytes than the file's "
                                         r"[0-9,]+; corrupt, or members that overlap$"):
        checkpoint.load(path)
