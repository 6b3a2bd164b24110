"""A text file as a task (gla_np.training.text) and text runs of the training command: the
vocabulary and windows, the 90/10 split, one-line refusals of files that are not UTF-8 text, and
checkpoints, resume and interrupts going through the same paths as every other task."""

import hashlib
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from gla_np.training import checkpoint, tasks, text, train
from train_cli import refused

# 200 distinct characters in code point order: token i is character i, so ids are positions
DISTINCT = "".join(chr(0x100 + i) for i in range(200))
TINY = ["--task", "text", "--seq_len", "8", "--batch_size", "4", "--hidden", "8", "--layers", "1",
        "--heads", "2", "--head_dim", "4", "--warmup", "2", "--eval_batches", "2", "--threads",
        "1", "--steps", "6"]


def _write(tmp_path, content, name="t.txt"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def test_vocabulary_tokens_and_split(tmp_path):
    words = "the cat sat on the mat; é and ü too.\n" * 7
    path = _write(tmp_path, words)
    corpus = text.load(path)
    assert corpus.vocab == "".join(sorted(set(words)))
    assert text.decode(corpus.vocab, corpus.ids) == words
    np.testing.assert_array_equal(text.encode(corpus.vocab, words), corpus.ids)
    assert corpus.split == math.floor(0.9 * len(words)) and corpus.path == os.path.abspath(path)
    assert corpus.sha256 == hashlib.sha256(words.encode()).hexdigest()


def test_windows_are_next_character_pairs_inside_their_part(tmp_path):
    path = _write(tmp_path, DISTINCT)  # ids 0..199: train part 0..179, held-out 180..199
    rng = np.random.default_rng(0)
    for split, lo, hi in (("train", 0, 180), ("heldout", 180, 200)):
        inputs, targets = text.windows(rng, 64, seq_len=7, text=path, split=split,
                                       vocab_size=200)
        assert inputs.shape == targets.shape == (64, 7) and inputs.dtype == np.int64
        np.testing.assert_array_equal(targets, inputs + 1)  # the next character everywhere
        np.testing.assert_array_equal(inputs[:, 1:], inputs[:, :-1] + 1)  # contiguous
        assert inputs.min() >= lo and targets.max() < hi, split
        assert len(set(inputs[:, 0])) > 3  # starts are drawn, not fixed
    a = tasks.make_batch("text", np.random.default_rng(5), 3, seq_len=7, text=path)
    b = tasks.make_batch("text", np.random.default_rng(5), 3, seq_len=7, text=path)
    np.testing.assert_array_equal(a[0], b[0])


def test_the_default_text_ships_with_python():
    path = text.default_text()
    assert path.replace(os.sep, "/").endswith("pydoc_data/topics.py") and os.path.isfile(path)
    corpus = text.load(path)
    assert len(corpus.ids) > 500_000 and 60 < len(corpus.vocab) < 200
    assert "for" in text.decode(corpus.vocab, corpus.ids[:20_000])


@pytest.mark.parametrize("content, message", [
    (b"", "is empty; expected a UTF-8 text file"),
    (b"text\0with a NUL", "holds NUL bytes (the first at offset 4): a binary file, not UTF-8 text"),
    (b"caf\xe9 latin-1", "is not UTF-8 (byte 0xe9 at offset 3 cannot be decoded)"),
], ids=["empty", "binary", "latin-1"])
def test_files_that_are_not_utf8_text_are_refused(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError) as err:
        text.load(path)
    assert str(err.value) == f"text: {path} {message}"


def test_bad_paths_sizes_and_vocabulary(tmp_path):
    with pytest.raises(ValueError, match=r"^text: .*nope: no such file$"):
        text.load(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="is a folder; expected a UTF-8 text file"):
        text.load(str(tmp_path))
    path = _write(tmp_path, DISTINCT)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"^seq_len: expected at most 19 for .*got 20$"):
        text.windows(rng, 2, seq_len=20, text=path)
    one = _write(tmp_path, "a", "one.txt")  # no window at all: said so, not "at most -1"
    with pytest.raises(ValueError, match=r"^text: .*one.txt is too short: its 1 characters "
                                         r"split 90/10 leave 0 in one part"):
        text.windows(rng, 2, seq_len=4, text=one)
    with pytest.raises(ValueError, match=r"^vocab_size: expected 200, the number of distinct"):
        text.windows(rng, 2, seq_len=4, text=path, vocab_size=256)
    with pytest.raises(ValueError, match=r"^split: expected one of \['train', 'heldout'\]"):
        text.windows(rng, 2, seq_len=4, text=path, split="test")
    with pytest.raises(ValueError, match=r"^prompt: the character 'z' \(U\+007A\) at position 2"):
        text.encode("ab", "abz")
    assert text.bits_per_char(math.log(2) * 1.5) == pytest.approx(1.5)


# -- text runs of python -m gla_np.train -------------------------------------------------------

@pytest.fixture
def corpus_file(tmp_path):
    return _write(tmp_path, "a small text, read as characters; " * 12)


def test_a_text_run_stores_its_file_and_vocabulary(corpus_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --text is stored as an absolute path
    train.main(TINY + ["--text", os.path.basename(corpus_file), "--out", "run"])
    ck = checkpoint.load(tmp_path / "run" / "checkpoint.npz")
    vocab = text.load(corpus_file).vocab
    assert ck.config["text"] == corpus_file and ck.config["vocab_size"] == len(vocab)
    assert ck.extra["vocab"] == vocab
    assert ck.extra["text_sha256"] == text.load(corpus_file).sha256
    assert ck.params["embedding.weight"].shape == (len(vocab), 8)
    out = capsys.readouterr().out
    loss = ck.extra["history"][-1][2]
    assert f"held-out: loss {loss:.4f} ({loss / math.log(2):.3f} bits per character)" in out


def test_text_run_refusals(corpus_file, tmp_path, capsys):
    out = ["--out", str(tmp_path / "r")]
    assert refused(TINY[2:] + ["--text", corpus_file] + out, capsys) == (
        "--text: only read by --task text, got --task mqar\n")
    err = refused(TINY + ["--text", corpus_file, "--vocab_size", "99"] + out, capsys)
    assert err.startswith("--vocab_size: with --task text the vocabulary is the 14 distinct")
    binary = _write(tmp_path, b"\x7fELF\0\0\0", "prog")
    assert refused(TINY + ["--text", binary] + out, capsys) == (
        f"--text: {binary} holds NUL bytes (the first at offset 4): a binary file, not UTF-8 "
        f"text\n")
    err = refused(TINY + ["--text", corpus_file, "--seq_len", "100"] + out, capsys)
    assert err.startswith("--seq_len: expected at most 40 for")
    assert not (tmp_path / "r").exists()


def _final_params(run_dir):
    return checkpoint.load(os.path.join(run_dir, "checkpoint.npz")).params


def test_interrupt_and_resume_continue_a_text_run_exactly(corpus_file, tmp_path, capsys,
                                                          monkeypatch):
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    train.main(TINY + ["--text", corpus_file, "--out", whole])
    real = train.batch

    def batch(run, stream, index):  # Ctrl-C while the 4th step draws its data: stop after it
        if stream == train.STREAM_DATA and index == 3:
            signal.raise_signal(signal.SIGINT)
        return real(run, stream, index)

    monkeypatch.setattr(train, "batch", batch)
    with pytest.raises(SystemExit) as exc:
        train.main(TINY + ["--text", corpus_file, "--out", parts])
    assert exc.value.code == 128 + signal.SIGINT
    assert checkpoint.load(os.path.join(parts, "checkpoint.npz")).step == 4
    monkeypatch.setattr(train, "batch", real)
    train.main(["--resume", os.path.join(parts, "checkpoint.npz"), "--text", corpus_file])
    a, b = _final_params(whole), _final_params(parts)
    assert all(np.array_equal(a[name], b[name]) for name in a)  # bit for bit


def test_resume_refuses_a_changed_text(corpus_file, tmp_path, capsys):
    run = str(tmp_path / "r")
    train.main(TINY + ["--text", corpus_file, "--out", run, "--stop_after", "2"])
    ck = os.path.join(run, "checkpoint.npz")
    other = _write(tmp_path, "another file", "other.txt")
    err = refused(["--resume", ck, "--text", other], capsys)
    assert err.startswith(f"--resume: options differ from the checkpoint {ck}: --text '{other}'")
    with open(corpus_file, "a") as f:
        f.write("a small text")  # the same characters, more of them
    with pytest.raises(SystemExit) as exc:
        train.main(["--resume", ck])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.endswith(f"the text {corpus_file} changed since the run started (its sha256 "
                        f"differs); resuming would train on other windows\n")
    with open(corpus_file, "a") as f:
        f.write("Q!")  # new characters: the same reason, not a damaged config['vocab_size']
    assert refused(["--resume", ck], capsys).endswith(
        f"the text {corpus_file} changed since the run started (its sha256 differs; so do its "
        f"characters); resuming would train on other windows\n")
    os.remove(corpus_file)
    assert refused(["--resume", ck], capsys) == (
        f"checkpoint {ck}: config['text']: {corpus_file}: no such file\n")


def test_stored_vocabulary_and_hash_are_checked(corpus_file):
    run = {"task": "text", "text": corpus_file}
    good = text.stored(run)
    text.check_stored("ck", run, good)  # the same file: accepted
    with pytest.raises(ValueError, match=r"^ck: the text .* \(its sha256 differs; so do its "
                                         r"characters\); resuming would train on other windows$"):
        text.check_stored("ck", run, {"vocab": "xyz", "text_sha256": "0" * 64})
    with pytest.raises(ValueError, match=r"^ck: extra\['vocab'\]: expected a string"):
        text.check_stored("ck", run, {"text_sha256": good["text_sha256"]})
    assert text.stored({"task": "mqar", "text": ""}) == {}


def test_a_python_without_the_default_text_says_what_to_do(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    assert refused(TINY + ["--out", str(tmp_path / "r")], capsys) == (
        "--text: no default text: this Python has no source file pydoc_data/topics.py; give "
        "--text PATH (any UTF-8 text file)\n")


def test_a_text_edited_or_removed_during_a_run_does_not_reach_it(corpus_file, tmp_path,
                                                                 monkeypatch):
    copy = _write(tmp_path, open(corpus_file, encoding="utf-8").read(), "copy.txt")
    sha = text.load(copy).sha256
    train.main(TINY + ["--text", corpus_file, "--out", str(tmp_path / "a")])
    real = train.batch

    def batch(run, stream, index):  # the user edits the file, then removes it, mid-run
        if stream == train.STREAM_DATA and index == 2:
            with open(copy, "a", encoding="utf-8") as f:
                f.write("new characters: Z, Q, 9\n" * 50)
        if stream == train.STREAM_DATA and index == 4:
            os.remove(copy)
        return real(run, stream, index)

    monkeypatch.setattr(train, "batch", batch)
    train.main(TINY + ["--text", copy, "--out", str(tmp_path / "b")])
    a, b = _final_params(tmp_path / "a"), _final_params(tmp_path / "b")
    assert all(np.array_equal(a[name], b[name]) for name in a)  # the text read at the start
    assert checkpoint.load(tmp_path / "b" / "checkpoint.npz").extra["text_sha256"] == sha


def test_a_fifo_is_refused_at_once_and_a_huge_file_before_it_is_read(tmp_path, monkeypatch):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    # in a subprocess with a timeout: opening a FIFO for reading would block until a writer came
    code = (f"from gla_np.training import text\n"
            f"try:\n    text.load({fifo!r})\nexcept ValueError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout == f"text: {fifo}: is a FIFO, expected a regular file\n", done.stderr
    monkeypatch.setattr(text, "MAX_BYTES", 10)
    path = _write(tmp_path, DISTINCT)
    with pytest.raises(ValueError, match=r"is larger than 10 bytes, the most a run reads; train on a "
                                         r"part of it$"):
        text.load(path, again=True)


def test_reading_a_text_costs_little_memory_and_too_little_is_one_line(tmp_path, monkeypatch):
    # np.unique over the code points sorted the whole file: 25 bytes a character at the peak,
    # and a MemoryError traceback under a memory limit (a 120 MB text under 2.5 GB)
    import tracemalloc

    path = _write(tmp_path, ("the cat sat on the mat, é ☃ \U0001F600\n" * 40_000)[:1_000_000])
    tracemalloc.start()
    try:
        corpus = text.load(path, again=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(corpus.ids) == 1_000_000 and peak < 16 * 1_000_000, peak  # before: 35 a char
    line = "the cat sat on the mat, é ☃ \U0001F600\n"
    assert text.decode(corpus.vocab, corpus.ids[:2 * len(line)]) == 2 * line

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(text.np, "frombuffer", no_memory)
    with pytest.raises(ValueError, match=r"^text: .*t.txt: not enough memory to read its "
                                         r"1,000,000 characters \(9 to 16 bytes each\)"):
        text.load(path, again=True)


def test_a_text_that_is_one_of_the_runs_own_files_is_refused(tmp_path, capsys):
    # --text out/metrics.csv: the run wrote its CSV over the text it trains on (the user's file
    # lost, and the run could never be resumed: its text "changed")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("metrics.csv", "checkpoint.npz"):
        corpus = out / name
        corpus.write_text("a small text, read as characters; " * 12)
        err = refused(TINY + ["--text", str(corpus), "--out", str(out), "--overwrite"], capsys)
        assert err == (f"--text {corpus}: is the {name} the run writes in --out {out}; move the "
                       f"text, or choose another --out\n")
        assert corpus.read_text() == "a small text, read as characters; " * 12
        corpus.unlink()
