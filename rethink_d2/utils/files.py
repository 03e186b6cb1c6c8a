"""Files that other processes may read or write at the same time.

* :func:`atomic_write`: a reader sees the old file or the complete new one, never a prefix;
* :func:`file_lock`: one process at a time builds a shared cache entry;
* :func:`cache_root`: where rethink-d2 keeps what it can rebuild: ``$XDG_CACHE_HOME/rethink_d2``
  (``~/.cache/rethink_d2``): the built-in data in ``<root>/shapes`` (``$RETHINK_D2_DATA`` moves
  it) and subset jsons in ``<root>/subsets`` (``$RETHINK_D2_CACHE`` moves them).
"""

import contextlib
import os
import re
import secrets

try:
    import fcntl
except ImportError:  # not POSIX: writers still never expose a partial file (atomic renames)
    fcntl = None

__all__ = ["TEMP_FILE_RE", "atomic_write", "cache_root", "file_lock"]

# ".<final name>.<pid>.<random hex>.tmp": hidden, and never ending like the final file
TEMP_FILE_RE = re.compile(r"^\..+\.\d+\.[0-9a-f]+\.tmp$")


def atomic_write(path, write, binary=True):
    """
    Write ``path`` so that it is at all times either absent/old or complete and new: ``write(f)``
    fills a hidden temp file of the same directory (created if needed), which is fsync-ed and
    renamed over ``path``. A process killed meanwhile leaves a :data:`TEMP_FILE_RE` file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    # os.open (not mkstemp) so that the file gets the usual umask permissions, not 0600.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    with contextlib.suppress(OSError):  # persist the rename where directories can be fsync-ed
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def file_lock(lock_path):
    """Hold an exclusive ``flock`` on ``lock_path`` (created) for the block; no-op without fcntl."""
    with open(lock_path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def cache_root():
    """``$XDG_CACHE_HOME/rethink_d2``, default ``~/.cache/rethink_d2`` (absolute)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.abspath(os.path.join(os.path.expanduser(base), "rethink_d2"))
