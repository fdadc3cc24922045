"""The DP budget ledger: atomic reservations, exhaustion, restart, crash, races, bad files.

The race tests start 16 threads and 16 processes at one barrier, all reserving from a budget
that holds exactly five charges, and then check the ledger itself: five entries, never more
rho than the limit. Nothing here asserts on time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import _dp_race
import pytest

from trustspace.dp import Ledger, Reservation, rho_for
from trustspace.dp._ledger import RHO_UNITS
from trustspace.errors import ConfigError, LedgerError, PolicyError

EPS, DELTA = 1.0, 1e-6
LIMIT = rho_for(EPS, DELTA)
FIFTH = LIMIT / 5 * (1 - 1e-9)  # five of these fit, a sixth does not


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "budget.sqlite"
    with Ledger(p, node="n1") as ledger:
        ledger.set_budget("alice", "adult", epsilon=EPS, delta=DELTA)
    return p


def spent_units(path: Path) -> int:
    """The ledger's own total of non-released charges, read with plain sqlite3."""
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT coalesce(sum(rho), 0) FROM entries WHERE state != 'released'"
        ).fetchone()[0]


def limit_units(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT rho_limit FROM budgets").fetchone()[0]


def test_reserve_commit_and_remaining(path: Path) -> None:
    with Ledger(path, node="n1") as ledger:
        b = ledger.budget("alice", "adult")
        assert b.rho_limit == pytest.approx(LIMIT) and b.rho_spent == 0
        r = ledger.reserve("alice", "adult", "q1", 0.01, epsilon=0.62, delta=1e-6)
        assert isinstance(r, Reservation) and r.rho == pytest.approx(0.01)
        assert ledger.budget("alice", "adult").rho_reserved == pytest.approx(0.01)
        ledger.commit(r)
        ledger.commit(r)  # idempotent
        b = ledger.budget("alice", "adult")
        assert b.rho_spent == pytest.approx(0.01) and b.rho_reserved == 0
        assert ledger.remaining("alice", "adult") == pytest.approx(LIMIT - 0.01)
        assert 0 < b.epsilon_spent < EPS and 0 < b.epsilon_remaining < EPS
        [entry] = ledger.entries("alice", "adult")
        assert (entry.request_id, entry.state, entry.epsilon, entry.recovered) == (
            "q1",
            "spent",
            0.62,
            False,
        )
        assert entry.created <= entry.updated


def test_release_gives_budget_back_but_spent_never_returns(path: Path) -> None:
    with Ledger(path) as ledger:
        r = ledger.reserve("alice", "adult", "q1", 0.01)
        ledger.release(r)
        assert ledger.remaining("alice", "adult") == pytest.approx(LIMIT)
        assert ledger.entries()[0].state == "released"
        with pytest.raises(LedgerError, match="already released"):
            ledger.commit(r)
        r2 = ledger.reserve("alice", "adult", "q2", 0.01)
        ledger.commit(r2)
        with pytest.raises(LedgerError, match="already spent"):
            ledger.release(r2)


def test_exhaustion_is_refused_clearly_and_charges_nothing(path: Path) -> None:
    with Ledger(path, node="n1") as ledger:
        for i in range(5):
            ledger.commit(ledger.reserve("alice", "adult", f"q{i}", FIFTH))
        before = spent_units(path)
        with pytest.raises(PolicyError) as info:
            ledger.reserve("alice", "adult", "q5", FIFTH, epsilon=0.4, delta=1e-6)
        text = str(info.value)
        for part in (
            "node n1",
            "'alice'",
            "'adult'",
            "'q5'",
            "remaining",
            "smaller epsilon",
            "nothing was charged",
            "[policy.dp]",
        ):
            assert part in text, part
        assert spent_units(path) == before
        assert len(ledger.entries()) == 5
        # A charge that fits what is left still goes through.
        left = ledger.remaining("alice", "adult")
        assert 0 < left < FIFTH
        ledger.commit(ledger.reserve("alice", "adult", "q6", left))
        assert ledger.remaining("alice", "adult") == 0


def test_still_refused_after_a_restart(path: Path) -> None:
    with Ledger(path) as ledger:
        for i in range(5):
            ledger.commit(ledger.reserve("alice", "adult", f"q{i}", FIFTH))
    with Ledger(path) as ledger, pytest.raises(PolicyError, match="budget exceeded"):
        ledger.reserve("alice", "adult", "q5", FIFTH)
    with Ledger(path) as ledger:
        assert ledger.budget("alice", "adult").rho_spent == pytest.approx(5 * FIFTH)


def test_other_refusals(path: Path) -> None:
    with Ledger(path) as ledger:
        with pytest.raises(PolicyError, match=r"no DP budget.*'bob'"):
            ledger.reserve("bob", "adult", "q1", 0.01)
        ledger.commit(ledger.reserve("alice", "adult", "q1", 0.01))
        with pytest.raises(PolicyError, match="already charged"):
            ledger.reserve("alice", "adult", "q1", 0.01)  # a replayed request id
        for bad in (0, -0.1, float("nan"), float("inf"), True, "0.1"):
            with pytest.raises(ConfigError, match="rho"):
                ledger.reserve("alice", "adult", "qx", bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="analyst"):
            ledger.reserve("", "adult", "qx", 0.01)
        with pytest.raises(ConfigError, match="epsilon"):
            ledger.set_budget("alice", "adult", epsilon=0, delta=1e-6)


def test_charges_round_up_and_limits_round_down(path: Path) -> None:
    with Ledger(path) as ledger:
        r = ledger.reserve("alice", "adult", "tiny", 1e-15)
        assert r.rho == 1 / RHO_UNITS  # never charged less than asked
    assert limit_units(path) <= LIMIT * RHO_UNITS


def test_lowering_a_limit_keeps_what_was_spent(path: Path) -> None:
    with Ledger(path) as ledger:
        ledger.commit(ledger.reserve("alice", "adult", "q1", FIFTH * 2))
        b = ledger.set_budget("alice", "adult", epsilon=0.1, delta=1e-6)
        assert b.rho_spent == pytest.approx(FIFTH * 2) and b.rho_remaining == 0


def test_a_crash_after_reservation_counts_as_spent(path: Path) -> None:
    proc = _dp_race.context().Process(target=_dp_race.reserve_and_crash, args=(str(path), FIFTH))
    proc.start()
    proc.join()
    assert proc.exitcode == 0
    with Ledger(path) as ledger:  # the node restarts and recovers
        [entry] = ledger.entries()
        assert (entry.request_id, entry.state, entry.recovered) == ("crash", "spent", True)
        assert ledger.budget("alice", "adult").rho_spent == pytest.approx(FIFTH)
        r = Reservation("alice", "adult", "crash", FIFTH, None, None, entry.created)
        with pytest.raises(LedgerError, match="after a crash"):
            ledger.release(r)


def test_an_unsettled_reservation_is_used_even_before_recovery(path: Path) -> None:
    with Ledger(path) as a, Ledger(path, recover=False) as b:
        a.reserve("alice", "adult", "open", LIMIT * 0.9)
        with pytest.raises(PolicyError):
            b.reserve("alice", "adult", "other", LIMIT * 0.2)


def _race(ledger: Ledger, request_id: str, barrier: threading.Barrier) -> str:
    barrier.wait()
    try:
        r = ledger.reserve("alice", "adult", request_id, FIFTH)
    except PolicyError:
        return "refused"
    ledger.commit(r)
    return "charged"


@pytest.mark.parametrize("shared", [False, True], ids=["own-connections", "one-ledger"])
def test_sixteen_threads_racing_never_overspend(path: Path, shared: bool) -> None:
    barrier = threading.Barrier(16)
    results: list[str] = []
    one = Ledger(path) if shared else None
    ledgers = [one or Ledger(path, recover=False) for _ in range(16)]

    def run(i: int) -> None:
        results.append(_race(ledgers[i], f"t{i}", barrier))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for ledger in set(ledgers):
        ledger.close()
    assert sorted(results) == ["charged"] * 5 + ["refused"] * 11
    assert spent_units(path) <= limit_units(path)
    with Ledger(path) as ledger:
        assert len(ledger.entries()) == 5


def test_sixteen_processes_racing_never_overspend(path: Path) -> None:
    ctx = _dp_race.context()
    barrier = ctx.Barrier(16)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_dp_race.race, args=(str(path), f"p{i}", FIFTH, barrier, out))
        for i in range(16)
    ]
    for p in procs:
        p.start()
    results = sorted(out.get() for _ in procs)
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 16
    assert results == ["charged"] * 5 + ["refused"] * 11
    assert spent_units(path) <= limit_units(path)
    with Ledger(path) as ledger:
        entries = ledger.entries()
        assert len(entries) == 5
        assert {e.state for e in entries} == {"spent"}
        assert {e.request_id for e in entries} <= {f"p{i}" for i in range(16)}


def test_the_file_is_wal_and_fsynced(path: Path) -> None:
    with Ledger(path) as ledger:
        assert ledger._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ledger._db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "budget.sqlite"
    bad.write_bytes(os.urandom(8192))
    with pytest.raises(LedgerError, match=f"{bad}.*corrupt.*backup"):
        Ledger(bad, node="n1")


def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(LedgerError, match="not a trustspace ledger"):
        Ledger(other)


def test_a_damaged_ledger_is_a_clear_error(path: Path) -> None:
    with Ledger(path) as ledger:
        for i in range(200):
            ledger.commit(ledger.reserve("alice", "adult", f"q{i:03}-" + "x" * 200, 1e-6))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    assert len(data) > 4 * 4096
    data[2 * 4096 : 4 * 4096] = b"\xff" * (2 * 4096)  # overwrite two pages of the table
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match=f"{path}.*corrupt"), Ledger(path) as ledger:
        ledger.entries()


def test_a_locked_file_is_a_clear_error_and_charges_nothing(path: Path) -> None:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with (
            Ledger(path, node="n1", timeout=0.05, recover=False) as ledger,
            pytest.raises(LedgerError, match=f"{path} on node n1 is locked.*nothing was"),
        ):
            ledger.reserve("alice", "adult", "q1", 0.01)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert spent_units(path) == 0


def test_a_closed_ledger_says_so(path: Path) -> None:
    ledger = Ledger(path)
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.remaining("alice", "adult")
