"""Atomic file writes: a temporary file in the same folder, fsync'd, then renamed into place.

A reader (or a crash) never sees a half-written file under the final name, and a private
file is created with its final mode, so it is never readable by others even for an instant.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | Callable[[IO[Any]], object],
    *,
    mode: int = 0o644,
    text: bool = False,
) -> Path:
    """Write ``data`` (bytes, or a function that writes to the open file) to ``path``.

    Args:
        path: the final file; its folder is created if missing.
        data: the bytes, or ``write(fh)`` for streamed output (``text=True`` opens the file in
            text mode, UTF-8, ``newline=""`` as the csv module wants).
        mode: the permissions, set at creation (``0o600`` for private keys).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "k.pem"
    >>> _ = write_atomic(p, b"secret", mode=0o600)
    >>> p.read_bytes(), oct(p.stat().st_mode & 0o777)
    (b'secret', '0o600')
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600; widen (or keep) before any byte is written
        opened: IO[Any] = (
            os.fdopen(fd, "w", newline="", encoding="utf-8") if text else os.fdopen(fd, "wb")
        )
        with opened as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename, so a crash never shows a stub
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
