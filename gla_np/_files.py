"""Atomic file writes, the one implementation every saver in gla_np uses.

Checkpoints and the metrics CSV (``gla_np.training.checkpoint``), fla's ``model.safetensors``
and ``config.json`` (``gla_np.fla``) and the golden cases (``gla_np.golden``) are all written by
``write_atomic``: a reader, or a run killed mid-save, only ever sees the old complete file or
the new complete one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets


def _temp_name(path):
    """A fresh name ``.<file name>.<8 random characters>.tmp`` beside ``path``."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")


def _remove_leftovers(path):
    """Delete temporary files of ``path`` that a killed save left behind (our naming only).

    A kill (SIGKILL, power loss) mid-save runs no cleanup, so its temporary file stays; without
    this, every such kill would leave one more. (The 8 characters also match the names that
    ``tempfile.mkstemp`` gave these files in earlier versions.)
    """
    directory, base = os.path.split(os.path.abspath(path))
    ours = re.compile(re.escape(f".{base}.") + r"[a-z0-9_]{8}\.tmp")
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if ours.fullmatch(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


def write_atomic(path, write):
    """Write a file so that a reader only ever sees the old complete file or the new one.

    ``write(f)`` fills a binary file object: a temporary file beside ``path``, created with the
    mode an ordinary new file gets (0o666 less the umask, so the checkpoint and the CSV of a run
    match). It is flushed and fsync'ed, then renamed over ``path`` (``os.replace``, atomic on
    POSIX and Windows), and the folder is fsync'ed where supported. If ``write`` raises, the
    temporary file is removed and ``path`` is left as it was. Leftovers of earlier killed
    writes of ``path`` are removed first.
    """
    path = os.fspath(path)
    _remove_leftovers(path)
    while True:
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:  # a name drawn twice: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable, where supported
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
