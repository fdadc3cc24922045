"""Atomic file writes (a temporary file in the same folder, fsync'd, then renamed into place)
and ``Flusher``, which keeps such writes off a request's path.

A reader (or a crash) never sees a half-written file under the final name, and a private
file is created with its final mode, so it is never readable by others even for an instant.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("trustspace")


def unwritable_ancestor(path: str | os.PathLike[str]) -> Path | None:
    """The nearest existing ancestor of ``path`` (``path`` itself if it exists) when this user
    cannot create files in it; None when it can (what a later write there would meet).

    >>> unwritable_ancestor("/") is None or unwritable_ancestor("/") == Path("/")
    True
    """
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    return None if os.access(here, os.W_OK | os.X_OK) else here


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


class Flusher:
    """Runs ``write()`` on a background thread whenever ``kick()`` asked for it, coalescing the
    kicks that arrive while a write runs into one more write.

    For state whose newest value is all that needs to reach the disk (a node's latest audit
    checkpoint, the witness's latest checkpoint per node): the caller updates the state, kicks,
    and does not wait for the fsync. ``interval_s`` is the least time between two writes.
    ``flush()`` waits until everything kicked so far is written; ``close()`` flushes and stops.
    """

    def __init__(self, write: Callable[[], None], *, name: str, interval_s: float = 0.0) -> None:
        self._write = write
        self._interval = interval_s
        self._cond = threading.Condition()
        self._wanted = 0  # kicks so far
        self._done = 0  # kicks covered by a finished write
        self._closed = False
        self._hurry = False  # a flush() is waiting: skip the rest of the interval
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def kick(self) -> None:
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every kick so far is written; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._wanted
            self._hurry = True
            self._cond.notify_all()
            while self._done < target and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._done >= target

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._done >= self._wanted and not self._closed:
                    self._cond.wait()
                if self._done >= self._wanted:
                    return  # closed with nothing left to write
                target = self._wanted
            try:
                self._write()
            except Exception:  # keep the thread alive; the next kick retries
                log.exception("background write failed (%s)", self._thread.name)
            with self._cond:
                self._done = target
                self._cond.notify_all()
                end = time.monotonic() + self._interval
                while not (self._closed or self._hurry) and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)  # kicks wait out the interval; flush() does not
                self._hurry = False
