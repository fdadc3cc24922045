"""Test-only fault injection for a node process; off unless ``TRUSTSPACE_TEST_FAULT`` is set.

The reliability suite (``tests/test_faults.py``) uses it to make a real node process exit or
stall at a precise point, which killing from outside cannot do deterministically. The variable
holds comma-separated ``POINT:ACTION`` items:

- ``POINT`` is ``secagg:STAGE`` (``advertise``, ``share_keys``, ``masked_input``, ``unmask``:
  on receiving that stage's request, before answering) or ``audit:append`` (half-way through
  writing an audit line: the first half of the line is on disk, the rest never is).
- ``ACTION`` is ``exit`` (``os._exit(FAULT_EXIT_CODE)``, as abrupt as SIGKILL: no drain, no
  flush) or ``sleep=SECONDS`` (stall, then go on; at most ``MAX_SLEEP_S``).

Never set it in production: a node with a fault configured logs a warning at start-up.

>>> parse("secagg:masked_input:exit, audit:append:sleep=2")
{'secagg:masked_input': 'exit', 'audit:append': 'sleep=2'}
>>> parse("")
{}
"""

from __future__ import annotations

import logging
import os
import time

from trustspace.errors import ConfigError

ENV = "TRUSTSPACE_TEST_FAULT"
FAULT_EXIT_CODE = 86  # distinguishable from a crash (1) or a signal (negative)
MAX_SLEEP_S = 120.0  # a stall is bounded too: every loop and wait in the suite is
log = logging.getLogger("trustspace.node")


def parse(text: str) -> dict[str, str]:
    """``"POINT:ACTION,..."`` -> ``{POINT: ACTION}``; raises ``ConfigError`` on a bad item."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        point, sep, action = item.rpartition(":")
        if not sep or not point or not (action == "exit" or action.startswith("sleep=")):
            raise ConfigError(f"{ENV}: {item!r} is not POINT:exit or POINT:sleep=SECONDS")
        out[point] = action
    return out


_FAULTS = parse(os.environ.get(ENV, ""))
if _FAULTS:
    log.warning("%s is set (%s): test-only fault injection is ON", ENV, _FAULTS)


def active(point: str) -> bool:
    """Whether a fault is configured at ``point`` (cheap: one dict lookup)."""
    return point in _FAULTS


def trip(point: str) -> None:
    """Exit or stall if a fault is configured at ``point``; otherwise do nothing."""
    action = _FAULTS.get(point)
    if action is None:
        return
    if action == "exit":
        log.warning("test fault: exiting at %s", point)
        os._exit(FAULT_EXIT_CODE)
    seconds = min(float(action.partition("=")[2]), MAX_SLEEP_S)
    log.warning("test fault: stalling %.1f s at %s", seconds, point)
    time.sleep(seconds)
