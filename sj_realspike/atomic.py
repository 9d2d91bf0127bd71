"""Writing output files atomically: a failed or interrupted write never leaves a partial file behind."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "remove_pending", "resolve_destination"]

# Temporary files of writes in progress. An exception inside `atomic_write` removes its own;
# the set keeps what a second interrupt during that cleanup would leave (see `remove_pending`).
_PENDING: set[str] = set()


def resolve_destination(path: str | os.PathLike[str]) -> Path:
    """The regular file a write to ``path`` replaces: symlinks followed, anything else refused.

    Writing through a symlink updates the file it points to and keeps the link (an
    atomic replace of the link itself would turn it into a plain file). Directories,
    FIFOs, sockets and devices are refused: replacing them would destroy what the user
    meant to write *into*; so is a path ending in a separator (``out/``), which names a
    directory even where none exists yet.

    Raises:
        FileNotFoundError: the destination directory does not exist.
        IsADirectoryError: ``path`` is a directory or ends in a separator.
        OSError: ``path`` is a FIFO, socket or device.
    """
    text = os.fspath(path)
    if text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):  # Path() would drop the separator
        raise IsADirectoryError(f"cannot write {text}: a path ending in {text[-1]!r} names a directory; give a "
                                f"file name")
    given = Path(path)
    dest = given.resolve() if given.is_symlink() else given
    try:
        mode = dest.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"cannot write {given}: it is a directory; give a file name inside it")
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise OSError(f"cannot write {given}: it is {kind}; outputs are written as regular files")
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"cannot write {given}: directory {dest.parent} does not exist")
    return dest


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded.

    The temporary file ``.NAME.XXXX.tmp`` lives in the destination directory, so the
    final ``os.replace`` is atomic on POSIX and Windows; on any exception (including
    ``KeyboardInterrupt`` and the CLI's SIGTERM exception) it is removed and the
    exception propagates, leaving an existing ``path`` untouched. A symlink ``path``
    is followed (see `resolve_destination`); an existing file keeps its permissions.

    Returns:
        The file written (the link's target if ``path`` is a symlink).

    Raises:
        OSError: see `resolve_destination`, or the directory is not writable.
    """
    dest = resolve_destination(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    _PENDING.add(tmp)
    try:
        os.close(fd)
        if dest.exists():
            mode = stat.S_IMODE(dest.stat().st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes 0600; new outputs get the usual permissions
        os.chmod(tmp, mode)
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        remove_pending(tmp)
        raise
    _PENDING.discard(tmp)
    return dest


def remove_pending(*paths: str) -> list[str]:
    """Delete temporary files of unfinished writes (``paths``, or all of them); returns those deleted.

    A path leaves the pending set only once it is deleted or renamed into place, so an
    interrupt that lands inside the cleanup leaves it for the CLI, which calls this on
    every exit.
    """
    removed = []
    for tmp in paths or list(_PENDING):
        try:
            os.unlink(tmp)
            removed.append(tmp)
        except FileNotFoundError:
            pass
        _PENDING.discard(tmp)
    return removed
