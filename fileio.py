"""The one way lsq writes a file: a temporary file beside it, fsync, then a rename.

A reader (or a crash) sees either the old file or the whole new one, never half of it;
a write that fails leaves the old file untouched and no temporary file behind. Used by the
CLI, training checkpoints, shards, evaluation results and plots.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike, data: bytes | memoryview, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions a plain open() would give.

    With ``overwrite=False`` an existing ``path`` is never replaced: FileExistsError, even when
    another process creates it meanwhile (where the file system has hard links). Any OSError
    names ``path``, not the temporary file.
    """
    with open_atomic(path, overwrite) as f:
        f.write(data)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, overwrite: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, as :func:`write_atomic` does: it appears at
    ``path`` when the block ends, and not at all if the block raises."""
    target = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_no_clobber(tmp, target)
    except OSError as e:
        raise type(e)(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    _fsync_dir(target.parent)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read once (reading it means setting it, which is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _link_no_clobber(tmp: str, target: Path) -> None:
    """Publish tmp as target only if target does not exist, atomically where links work."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:  # file systems without hard links: check, then rename
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.replace(tmp, target)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; some platforms cannot open folders, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
