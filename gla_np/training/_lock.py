"""One writer per run folder: the lock ``python -m gla_np.train`` holds on its ``--out``.

Two runs writing into one folder would replace each other's checkpoint: both would pass the
"already holds a checkpoint" check before either had saved, and the later save would win. So
the command takes this lock before it looks at the folder and holds it until it exits; a second
run into the same folder is refused in one line that names the holder.

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
import os
import socket
import stat

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

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
        if err.errno in (11, 13, 35, 36):  # EAGAIN, EACCES, EWOULDBLOCK (BSD), EDEADLK (Windows)
            return False
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

    On failure the folders made so far are removed again and ValueError is raised.
    """
    missing, path = [], os.path.abspath(out)
    while not os.path.isdir(path):
        if os.path.lexists(path):
            if path == os.path.abspath(out):
                raise ValueError(f"{label} {out}: is a file; expected a folder (it gets "
                                 f"checkpoint.npz and metrics.csv)")
            raise ValueError(f"{label} {out}: {path} is a file, so no folder can be made "
                             f"under it")
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    made = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
            made.append(path)
        except FileExistsError:
            if not os.path.isdir(path):
                _remove_empty(made)
                raise ValueError(f"{label} {out}: {path} is a file, so no folder can be made "
                                 f"there") from None
        except OSError as err:
            _remove_empty(made)
            raise ValueError(f"{label} {out}: cannot make the folder "
                             f"({err.strerror or err})") from None
    return made


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


def acquire(out, label="--out"):
    """Take the lock of folder ``out`` (made if missing) or raise ValueError naming the holder.

    ``label`` names the folder's option in messages.
    """
    made = []
    path = os.path.join(out, LOCK_NAME)
    for _ in range(100):  # each retry means another run released or removed it meanwhile
        made += _make_folders(out, label)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0), 0o666)
        except FileNotFoundError:  # the folder was removed meanwhile (a refused run's)
            continue
        except OSError as err:
            _remove_empty(made)
            raise ValueError(f"{label} {out}: cannot write there ({err.strerror or err})") \
                from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{label} {out}: {path} is not a regular file; remove it")
            if not _try_lock(fd):
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
        previous = _read_holder(fd) or None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (holder_line() + "\n").encode("utf-8"))
        return FolderLock(out, path, fd, made, previous)
    _remove_empty(made)
    raise ValueError(f"{label} {out}: could not take the folder's lock {path} (it kept "
                     f"changing hands)")
