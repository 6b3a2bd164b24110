"""Files: atomic writes, the guarded reads every loader starts with, one writer per folder.

Checkpoints and the metrics CSV (``gla_np.training.checkpoint``), fla's ``model.safetensors``
and ``config.json`` (``gla_np.fla``) and the golden cases (``gla_np.golden``) are all written by
``write_atomic``: a reader, or a run killed mid-save, only ever sees the old complete file or
the new complete one, never half of one.

Reading a file that may be hostile (damaged, hand-edited, or made to hurt) starts here:
``open_regular`` opens only a regular file and never blocks (a FIFO or a device named as a
checkpoint is refused at once instead of hanging), ``read_text`` reads a bounded text file, and
``parse_json`` refuses JSON nested deeper than a loader could need (Python's parser recurses,
so 100,000 brackets would end in a RecursionError). Each raises ValueError naming the file.

One writer per run folder (``lock_folder``, the lock ``python -m gla_np.train`` holds on its
``--out``). Two runs writing into one folder would replace each other's checkpoint: both would
pass the "already holds a checkpoint" check before either had saved, and the later save would
win. So the command takes this lock before it looks at the folder and holds it until it exits;
a second run into the same folder is refused in one line that names the holder.

The lock is the file ``.gla_np-train.lock`` in the folder, locked with ``flock(2)``. Taking it
is one system call, atomic, so of two runs started together exactly one gets it. The kernel
drops the lock when its holder exits, however it exits (a SIGKILL or a crash included), so a
lock file left behind by a killed run is locked by nobody: the next run takes it over and says
whose it was. The holder writes its process id, host and start time into the file, which is how
a refused run can name it.

Releasing deletes the file while still holding the lock, then closes it. A run that opened the
old file just before may then get the lock on a file no longer in the folder; it checks that the
file it locked is still the one at the path, and tries again if not. The folders made for the
lock (``--out`` and missing parents) are removed again if the run leaves them empty, so a
refused run leaves nothing on disk.

``flock`` is POSIX; on Linux it also works on NFS (as a byte-range lock). Where there is no
``fcntl`` module (Windows), ``msvcrt.locking`` on the file's first byte does the same.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import secrets
import socket
import stat

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

MAX_JSON_DEPTH = 32  # gla_np's files and fla's nest at most 3 deep


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
    POSIX and Windows), and the folder is fsync'ed where supported. If anything raises on the
    way, ``write`` or a signal's handler (KeyboardInterrupt, the training command's stop) at
    any point from the file's creation to the rename, the temporary file is removed and
    ``path`` is left as it was. Leftovers of earlier killed writes of ``path`` are removed first.
    """
    path = os.fspath(path)
    _remove_leftovers(path)
    tmp = None
    try:  # from before the temporary file exists, so that it never outlives an exception
        while True:
            tmp = _temp_name(path)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_BINARY", 0), 0o666)
                break
            except FileExistsError:  # a name drawn twice (not ours to remove): draw again
                tmp = None
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):  # (gone already if the rename happened)
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
        raise ValueError(f"{where}: is a folder, expected a regular file") from None
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


# -- one writer per folder -------------------------------------------------------------------------

LOCK_NAME = ".gla_np-train.lock"


def _try_lock(fd):
    """Lock the open file ``fd`` without waiting; False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):
        return False
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False  # (EDEADLK: msvcrt's "locked by another process")
        raise
    return True


def _read_holder(fd):
    """The holder line written into the lock file ("" if none yet)."""
    try:
        text = os.pread(fd, 500, 0) if hasattr(os, "pread") else b""
    except OSError:
        return ""
    return text.decode("utf-8", "replace").strip()


def _make_folders(out, label):
    """Make ``out`` and its missing parents; returns the folders made, outermost first.

    On failure the folders made so far are removed again and ValueError is raised. Another run
    may make the same folders at the same moment, or remove them again (a refused run removes
    the empty folders it made): each path is judged by one ``stat``, and a folder that vanished
    meanwhile is made again.
    """
    made = []
    for _ in range(100):  # each retry means another run removed a folder we were under
        try:
            for path in _missing_folders(out, label):
                if _make_one(path, out, label):
                    made.append(path)
            return made
        except FileNotFoundError:
            continue
        except BaseException:
            _remove_empty(made)
            raise
    _remove_empty(made)
    raise ValueError(f"{label} {out}: cannot make the folder (other runs kept removing it)")


def _missing_folders(out, label):
    """The folders of ``out`` and its parents that do not exist yet, outermost first."""
    missing, path = [], os.path.abspath(out)
    while True:
        try:
            if stat.S_ISDIR(os.stat(path).st_mode):
                return missing[::-1]
        except (FileNotFoundError, NotADirectoryError):  # missing, or under a file (see below)
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                return missing[::-1]
            path = parent
            continue
        except OSError as err:
            raise ValueError(f"{label} {out}: cannot make the folder "
                             f"({err.strerror or err})") from None
        if path == os.path.abspath(out):
            raise ValueError(f"{label} {out}: is a file; expected a folder (it gets "
                             f"checkpoint.npz and metrics.csv)")
        raise ValueError(f"{label} {out}: {path} is a file, so no folder can be made under it")


def _make_one(path, out, label):
    """Make the folder ``path``; True if this call made it, False if it exists already.
    FileNotFoundError if its parent vanished meanwhile (the caller starts again)."""
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        try:
            if stat.S_ISDIR(os.stat(path).st_mode):
                return False  # another run made it first
        except FileNotFoundError:
            if os.path.islink(path):
                raise ValueError(f"{label} {out}: {path} is a link to nothing, so no folder "
                                 f"can be made there") from None
            raise  # made and removed again by another run: start again
        except OSError:
            pass
        raise ValueError(f"{label} {out}: {path} is a file, so no folder can be made "
                         f"there") from None
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"{label} {out}: cannot make the folder "
                         f"({err.strerror or err})") from None


def _remove_empty(folders):
    """Remove ``folders`` (outermost first) innermost first, each only if it is empty."""
    for path in reversed(folders):
        with contextlib.suppress(OSError):
            os.rmdir(path)


class FolderLock:
    """The lock on one run folder, held from ``acquire`` until ``release``.

    ``previous`` is the holder line of a run that ended without releasing the lock (killed),
    found in the file when this run took it over, else None.
    """

    def __init__(self, folder, path, fd, made, previous):
        self.folder, self.path, self._fd, self._made = folder, path, fd, made
        self.previous = previous

    @property
    def held(self):
        return self._fd is not None

    def release(self):
        """Delete the lock file and drop the lock; remove the folders made for it if empty.
        Safe to call twice."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while holding: see the module docstring
        os.close(self._fd)
        self._fd = None
        _remove_empty(self._made)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def holder_line():
    """Who holds a lock: this process's id, host and start time (UTC)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pid {os.getpid()} on {socket.gethostname()}, started {now}"


def lock_folder(out, label="--out"):
    """Take the lock of folder ``out`` (made if missing) or raise ValueError naming the holder.

    ``label`` names the folder's option in messages.
    """
    made = []
    path = os.path.join(out, LOCK_NAME)
    for _ in range(100):  # each retry means another run released or removed it meanwhile
        made += _make_folders(out, label)
        flags = (os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))
        try:
            try:  # O_EXCL tells whether this run made the file (and must remove it if refused)
                fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                fd, created = os.open(path, flags), False
        except FileNotFoundError:  # the folder or the file was removed meanwhile
            continue
        except OSError as err:
            _remove_empty(made)
            raise ValueError(f"{label} {out}: cannot write there ({err.strerror or err})") \
                from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{label} {out}: {path} is not a regular file; remove it")
            try:
                locked = _try_lock(fd)
            except OSError as err:  # a file system without locks (ENOLCK)
                if created:
                    os.unlink(path)
                raise ValueError(f"{label} {out}: cannot lock {path} ({err.strerror or err}); "
                                 f"choose another {label}") from None
            if not locked:
                holder = _read_holder(fd) or "a run still starting"
                raise ValueError(f"{label} {out}: another run is writing there ({holder}); "
                                 f"wait for it to end, or choose another {label}")
        except BaseException:
            os.close(fd)
            _remove_empty(made)
            raise
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        mine = os.fstat(fd)
        if now is None or (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
            os.close(fd)  # we locked a file its holder had just deleted: try again
            continue
        lock = FolderLock(out, path, fd, made, _read_holder(fd) or None)
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (holder_line() + "\n").encode("utf-8"))
        except OSError as err:  # a full disk, say
            lock.release()
            raise ValueError(f"{label} {out}: cannot write there ({err.strerror or err})") \
                from None
        return lock
    _remove_empty(made)
    raise ValueError(f"{label} {out}: could not take the folder's lock {path} (it kept "
                     f"changing hands)")
