"""Records of the reliability suite: what was tried, how many times, and what happened.

Each fault, fuzz, identity and load test calls ``record(...)``. When the environment variable
``TRUSTSPACE_RELIABILITY_LOG`` names a file, one JSON line per record is appended to it;
``scripts/reliability.py`` runs the suite with it set and renders ``docs/reliability.md``.
Without the variable nothing is written (a plain ``make test`` leaves no files behind).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

ENV = "TRUSTSPACE_RELIABILITY_LOG"
_lock = threading.Lock()


def record(area: str, case: str, outcome: str, *, tries: int = 1, ok: bool = True) -> None:
    """Append one record: ``area`` (faults, bad input, identity, load, data safety), the
    ``case`` tried, how many ``tries``, the ``outcome`` observed and whether it was the
    expected one (a failing test records ``ok=False`` before it fails)."""
    target = os.environ.get(ENV)
    if not target:
        return
    line = json.dumps(
        {"area": area, "case": case, "tries": tries, "outcome": outcome, "ok": ok},
        sort_keys=True,
    )
    with _lock:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
