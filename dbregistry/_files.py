"""Reading the files a configuration names: bounded in size and in time, whatever the file is.

One owner for every read the library makes of a user's file: the YAML file,
the ``.env`` file, ``password_file`` and ``${file:...}``. ``stat()`` is no
guide (``/dev/zero``, a FIFO and ``/proc`` files report 0 bytes), so the read
itself stops one byte past the limit; a file that is not a regular file is
opened without blocking and read within a deadline, so that a FIFO nobody
writes to cannot stop the load.
"""

from __future__ import annotations

import os
import select
import stat
import time
from typing import Final

from ._secrets import utf8_text

__all__ = [
    "MAX_ENV_FILE_BYTES",
    "MAX_SECRET_FILE_BYTES",
    "READ_TIMEOUT",
    "FileReadError",
    "read_bounded",
    "read_secret_file",
]

# A password, a token or a certificate; nothing honest comes near.
MAX_SECRET_FILE_BYTES: Final = 64 * 1024
MAX_ENV_FILE_BYTES: Final = 1024 * 1024
# How long a FIFO, a pipe or a device may take to deliver what it holds.
READ_TIMEOUT: Final = 5.0
_CHUNK: Final = 64 * 1024


class FileReadError(ValueError):
    """A file that cannot be read within the bounds; the message says why, never what it holds."""

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        self.kind = kind  # "missing", "directory", "permission", "too_large", "nul", "unreadable"


def read_bounded(path: str | os.PathLike[str], limit: int, *, timeout: float = READ_TIMEOUT) -> bytes:
    """At most ``limit`` bytes of the file at ``path``; `FileReadError` when it holds more or takes too long.

    >>> read_bounded("/dev/null", 10)
    b''
    """
    name = os.fspath(path)
    if "\x00" in name:
        raise FileReadError("the path contains a NUL character", "nul")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileReadError("does not exist", "missing") from None
    except PermissionError:
        raise FileReadError("permission denied", "permission") from None
    except OSError as e:
        raise FileReadError(f"cannot be opened ({os.strerror(e.errno or 0) or type(e).__name__})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise FileReadError("is a directory, not a file", "directory")
        deadline = None if stat.S_ISREG(mode) else time.monotonic() + timeout
        return _read(fd, limit, deadline)
    finally:
        os.close(fd)


def _read(fd: int, limit: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
        except BlockingIOError:
            # Only a FIFO, a pipe or a device gets here: a regular file never blocks.
            left = (deadline or 0.0) - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise FileReadError(f"gave nothing to read within {READ_TIMEOUT:g} s (a FIFO or device?)") from None
            continue
        except OSError as e:
            raise FileReadError(f"cannot be read ({os.strerror(e.errno or 0) or type(e).__name__})") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise FileReadError(f"was still being written after {READ_TIMEOUT:g} s (a FIFO or device?)")
    if size > limit:
        raise FileReadError(f"holds more than {limit:,} bytes, the limit for this file", "too_large")
    return b"".join(chunks)


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """A secret file's text, one trailing newline (``\\n`` or ``\\r\\n``) stripped.

    >>> read_secret_file("/dev/null")
    ''
    """
    return utf8_text(read_bounded(path, MAX_SECRET_FILE_BYTES)).removesuffix("\n").removesuffix("\r")
