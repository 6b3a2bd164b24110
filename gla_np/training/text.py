"""A text file as a training task: one token per character, windows of the first 90 % to train
on, the last 10 % held out.

    vocab    the file's distinct characters, sorted; token i is the character vocab[i]
    ids      the whole file as tokens                          (N,)
    train    ids[:split],  split = floor(0.9 N)                training windows come from here
    heldout  ids[split:]                                       held-out windows come from here

A window starting at s reads T + 1 characters: ``inputs = ids[s : s+T]`` and
``targets = ids[s+1 : s+T+1]``, the next character at every position (no position is ignored).
Starts are drawn uniformly from the part, so no training window reads a held-out character.
The loss is in nats per character; divided by ln 2 it is the bits per character
(``bits_per_char``), the usual measure of a character model: a model guessing uniformly among
100 characters needs log2(100) = 6.6 bits, one that knows how often each occurs about 4 on
English text.

The file is read in place, checked (it must exist, be non-empty, be UTF-8 and hold no NUL
byte), and kept in memory (``load``): a run reads it once, when it starts or resumes, and a
change to the file after that does not reach the run. Nothing here downloads anything.

The default text (``default_text``) is ``pydoc_data/topics.py`` of the running Python's standard
library: the help texts that ``help("for")`` prints, generated from the Python documentation
and shipped with every CPython (3.10 to 3.13: 745 to 823 kB; Debian's ``/usr/bin/python3`` has
it in its standard library package). So every machine that runs gla_np has it, no download is
needed, and nothing of it is committed here. It is English prose with code examples, wrapped in
Python string literals one line each: a model that learns it shows both, words and layout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from typing import NamedTuple

import numpy as np

from gla_np import _files
from gla_np._checks import check_positive_int

TRAIN_FRACTION = 0.9
# The largest file read: 128 MiB (enwik8's 100 MB fits). Reading one takes about 9 bytes per
# character at the peak (the text, its code points, the ids), 1.2 GiB at the limit.
MAX_BYTES = 128 * 2**20
SPLITS = ("train", "heldout")


class Corpus(NamedTuple):
    """A text file as tokens (what ``load`` returns)."""

    path: str  # the absolute path it was read from
    vocab: str  # its distinct characters, sorted: token i is vocab[i]
    ids: np.ndarray  # (N,) int32, the whole file as tokens
    split: int  # floor(0.9 N): ids[:split] is trained on, ids[split:] held out
    sha256: str  # of the file's bytes: a resumed run checks that its text did not change


def default_text():
    """The path of ``pydoc_data/topics.py`` in this Python's standard library (module
    docstring), found without importing it; ValueError where this Python lacks it."""
    try:
        spec = importlib.util.find_spec("pydoc_data.topics")
    except ImportError:  # no pydoc_data package at all
        spec = None
    path = getattr(spec, "origin", None)
    if not path or not path.endswith(".py") or not os.path.isfile(path):
        raise ValueError("text: no default text: this Python has no source file "
                         "pydoc_data/topics.py; give --text PATH (any UTF-8 text file)")
    return path


_READ = {}  # absolute path -> the Corpus this process read there last (``load``)
_KEEP = 8  # texts kept in _READ; the oldest goes first


def load(path, *, again=False):
    """The UTF-8 text file ``path`` as a ``Corpus``; ValueError (one line, starting ``text:``)
    for a missing, empty, binary or non-UTF-8 file.

    A file is read once per process: later calls return the same Corpus without touching the
    file, so a run trains on the text as it was when it started, even if the file is edited or
    removed meanwhile. ``again=True`` reads it anew: a new run does, and a resumed one, which
    then compares it with what the run stored (``check_stored``).
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"text: expected the path of a UTF-8 text file, got {path!r}")
    path = os.path.abspath(os.fspath(path))
    if path in _READ and not again:
        return _READ[path]
    _READ.pop(path, None)
    corpus = _read(path)
    if len(_READ) >= _KEEP:
        del _READ[next(iter(_READ))]
    _READ[path] = corpus
    return corpus


def _read(path):
    if os.path.isdir(path):
        raise ValueError(f"text: {path} is a folder; expected a UTF-8 text file")
    # a regular file only: a FIFO would block the open (and the run with it) until a writer came
    with _files.open_regular(path, f"text: {path}") as f:
        try:  # in pieces: read(MAX_BYTES + 1) would allocate 128 MiB for any file
            data, piece = bytearray(), True
            while piece and len(data) <= MAX_BYTES:
                piece = f.read(min(2**20, MAX_BYTES + 1 - len(data)))
                data += piece
            data = bytes(data)
        except OSError as err:
            raise ValueError(f"text: {path}: cannot be read ({err.strerror or err})") from None
    if len(data) > MAX_BYTES:
        raise ValueError(f"text: {path} is larger than {MAX_BYTES:,} bytes, the most a run "
                         f"reads; train on a part of it")
    if not data:
        raise ValueError(f"text: {path} is empty; expected a UTF-8 text file")
    if b"\0" in data:
        raise ValueError(f"text: {path} holds NUL bytes (the first at offset "
                         f"{data.index(0)}): a binary file, not UTF-8 text")
    try:
        chars = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"text: {path} is not UTF-8 (byte 0x{data[err.start]:02x} at offset "
                         f"{err.start} cannot be decoded)") from None
    sha256 = hashlib.sha256(data).hexdigest()
    del data
    try:
        vocab = "".join(sorted(set(chars)))  # the distinct characters, in code point order
        # each character's token through a table indexed by code point (at most 0x10FFFF):
        # no sort of the whole file, so reading costs about 9 bytes a character at the peak
        # (the text, its code points, the tokens; up to 16 where Python stores the text with
        # 4 bytes a character, as it does when any is beyond U+FFFF), 1.2 GiB at the limit
        table = np.zeros(ord(vocab[-1]) + 1, dtype=np.int32)
        table[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=np.int32)
        ids = table[np.frombuffer(chars.encode("utf-32-le"), dtype="<u4")]  # (N,) int32
    except MemoryError:
        raise ValueError(f"text: {path}: not enough memory to read its {len(chars):,} "
                         f"characters (9 to 16 bytes each); train on a part of it") from None
    ids.flags.writeable = False  # shared by every batch of the process
    return Corpus(path, vocab, ids, int(len(ids) * TRAIN_FRACTION), sha256)


def encode(vocab, s, name="prompt"):
    """The tokens of the string ``s`` under ``vocab``, int64 (len(s),); a character that is not
    in the vocabulary is a ValueError naming ``name``, the character and its position."""
    if not isinstance(s, str):
        raise ValueError(f"{name}: expected a string, got {type(s).__name__}")
    table = {ch: i for i, ch in enumerate(vocab)}
    for i, ch in enumerate(s):
        if ch not in table:
            raise ValueError(f"{name}: the character {ch!r} (U+{ord(ch):04X}) at position {i} "
                             f"is not in the run's vocabulary of {len(vocab)} characters (those "
                             f"of its training text)")
    return np.array([table[ch] for ch in s], dtype=np.int64)


def decode(vocab, ids):
    """The string of the tokens ``ids`` (any iterable of ints in [0, len(vocab))); a token
    outside that range is a ValueError (a negative one would silently count from the end)."""
    out = []
    for i in ids:
        if not 0 <= int(i) < len(vocab):
            raise ValueError(f"ids: expected tokens in [0, {len(vocab)}), got {int(i)}")
        out.append(vocab[int(i)])
    return "".join(out)


def bits_per_char(loss):
    """A loss in nats per character as bits per character: loss / ln 2."""
    return loss / math.log(2)


def windows(rng, batch_size, *, seq_len=64, vocab_size=None, text=None, split="train"):
    """``batch_size`` windows of ``seq_len`` characters from one part of the text file ``text``
    (None or "": ``default_text()``; ``split``: "train", the first 90 %, or "heldout", the rest).
    Returns ``(inputs, targets)``,
    int64 ``(batch_size, seq_len)``, targets the inputs shifted by one character.

    ``vocab_size``, when given, must be the file's number of distinct characters (the model's
    vocabulary). Both parts must hold a window of ``seq_len + 1`` characters.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a np.random.Generator, got {type(rng).__name__}")
    B = check_positive_int("batch_size", batch_size)
    T = check_positive_int("seq_len", seq_len)
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    corpus = load(text or default_text())
    n = len(corpus.vocab)
    if vocab_size is not None and vocab_size != n:
        raise ValueError(f"vocab_size: expected {n}, the number of distinct characters in "
                         f"{corpus.path}, got {vocab_size!r}")
    shortest = min(corpus.split, len(corpus.ids) - corpus.split)
    if shortest < 2:  # no window at all, whatever seq_len
        raise ValueError(f"text: {corpus.path} is too short: its {len(corpus.ids):,} "
                         f"characters split 90/10 leave {shortest} in one part, and a window "
                         f"reads at least 2 (say, 20 characters or more)")
    if shortest < T + 1:
        raise ValueError(f"seq_len: expected at most {shortest - 1} for {corpus.path} (its "
                         f"{len(corpus.ids):,} characters split 90/10; a window of each part "
                         f"reads seq_len + 1 of them), got {T}")
    lo, hi = (0, corpus.split) if split == "train" else (corpus.split, len(corpus.ids))
    starts = rng.integers(lo, hi - T, size=B)  # (B,): each window ends inside its part
    rows = starts[:, None] + np.arange(T + 1)  # (B, T + 1)
    chunk = corpus.ids[rows].astype(np.int64)  # (B, T + 1)
    return chunk[:, :-1].copy(), chunk[:, 1:].copy()


# -- a text run (gla_np.training.train stores these with the run) ----------------------------

def run_options(run, given=()):
    """For a new run of ``python -m gla_np.train``: the run's ``text`` (absolute path; the
    default text when it is "") and ``vocab_size`` (the file's), as a dict to update the run
    with; for any other task, checks that no ``--text`` was given and returns {}."""
    if run["task"] != "text":
        if run["text"] or "text" in given:
            raise ValueError(f"--text: only read by --task text, got --task {run['task']}")
        return {}
    corpus = _flagged(lambda: load(run["text"] or default_text(), again=True))
    n = len(corpus.vocab)
    if "vocab_size" in given and run["vocab_size"] != n:
        raise ValueError(f"--vocab_size: with --task text the vocabulary is the {n} distinct "
                         f"characters of {corpus.path}; leave --vocab_size out, got "
                         f"{run['vocab_size']}")
    return {"text": corpus.path, "vocab_size": n}


def _flagged(read):
    try:
        return read()
    except ValueError as err:
        raise ValueError(f"--{err}") from None


def stored(run):
    """What a text run saves beside its checkpoint's config: the vocabulary (so that
    ``python -m gla_np.sample`` needs only the checkpoint) and the sha256 of the text it trains
    on (as read when the run started). {} for any other task."""
    if run.get("task") != "text":
        return {}
    corpus = load(run["text"])
    return {"vocab": corpus.vocab, "text_sha256": corpus.sha256}


def check_stored(where, run, extra):
    """On resume: the text file still holds what the run was trained on (same bytes, so the
    same vocabulary and the same windows); ValueError naming ``where`` otherwise."""
    if run.get("task") != "text":
        return
    try:
        now = load(run["text"], again=True)
    except ValueError as err:  # "text: <path>: ..." -> "<where>: config['text']: <path>: ..."
        raise ValueError(f"{where}: config['text']: {str(err).partition(': ')[2]}") from None
    for key in ("vocab", "text_sha256"):
        if not isinstance(extra.get(key), str):
            raise ValueError(f"{where}: extra[{key!r}]: expected a string (a text run stores "
                             f"its vocabulary and its text's sha256), got {extra.get(key)!r}")
    if extra["text_sha256"] != now.sha256:
        chars = "; so do its characters" if extra["vocab"] != now.vocab else ""
        raise ValueError(f"{where}: the text {run['text']} changed since the run started (its "
                         f"sha256 differs{chars}); resuming would train on other windows")
