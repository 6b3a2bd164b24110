"""Files: atomic writes, and the guarded reads every loader in gla_np starts with.

Checkpoints and the metrics CSV (``gla_np.training.checkpoint``), fla's ``model.safetensors``
and ``config.json`` (``gla_np.fla``) and the golden cases (``gla_np.golden``) are all written by
``write_atomic``: a reader, or a run killed mid-save, only ever sees the old complete file or
the new complete one, never half of one.

Reading a file that may be hostile (damaged, hand-edited, or made to hurt) starts here:
``open_regular`` opens only a regular file and never blocks (a FIFO or a device named as a
checkpoint is refused at once instead of hanging), ``read_text`` reads a bounded text file, and
``parse_json`` refuses JSON nested deeper than a loader could need (Python's parser recurses,
so 100,000 brackets would end in a RecursionError). Each raises ValueError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat

MAX_JSON_DEPTH = 32  # gla_np's own files nest at most 4 deep; fla's config.json 3


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


def open_regular(path, where):
    """``path`` opened for reading in binary, if it is a regular file; else ValueError.

    The file is opened without blocking and checked on the open descriptor, so a FIFO (which
    would block ``open`` until a writer came) or a device is refused at once, and the check
    and the read see the same file. ``where`` starts the message ("checkpoint x.npz").
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{where}: is a folder, expected a file") from None
    except OSError as err:
        raise ValueError(f"{where}: cannot be opened ({err.strerror or err})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
                if stat.S_ISSOCK(mode) else "not a regular file")
        raise ValueError(f"{where}: is {kind}, expected a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_text(path, where, max_bytes):
    """The UTF-8 text of the regular file ``path``, refused (ValueError) above ``max_bytes``."""
    with open_regular(path, where) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{where}: larger than {max_bytes:,} bytes, more than such a file "
                         f"holds")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: not UTF-8 text ({err})") from None


def parse_json(text, where, *, object_pairs_hook=None):
    """``json.loads(text)``, refused (ValueError naming ``where``) if it is not valid JSON or
    nests deeper than ``MAX_JSON_DEPTH`` arrays and objects."""
    try:
        value = json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise ValueError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, too many digits, a hook's refusal
        raise ValueError(f"{where}: not valid JSON ({err})") from None
    # the depth of what was parsed, without recursion: (value, depth) pairs still to visit
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
            todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict)
                                                 else item))
    return value
