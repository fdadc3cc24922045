"""A node's durable privacy-budget ledger: per (analyst, dataset) limits and charges, in SQLite.

Every differentially private answer a node takes part in is charged, in zCDP's rho, against the
budget of the analyst who asked, on the dataset asked about; rho adds up under composition (BS16
Lemma 1.7), so the ledger keeps sums of integers and converts to ``(epsilon, delta)`` only to
report. A charge is reserved before the node computes and settled afterwards:

- ``reserve`` (one ``BEGIN IMMEDIATE`` transaction: the check and the insert cannot interleave
  with another process's) refuses with :class:`~trustspace.errors.PolicyError` when the charge
  would exceed the limit, and then charges nothing;
- ``commit`` marks a reservation spent once the node has answered;
- ``release`` gives a reservation back when the query was refused before the node computed.

Reserved budget counts as used, so a crash between reservation and answer can never give
budget away; on reopening, every reservation left open becomes spent (``recovered``). The file is
SQLite in WAL mode with ``synchronous=FULL``: a transaction that returned is on disk. rho is
stored as an integer number of 10^-12 units, charges rounded up and limits rounded down, so
that sums are exact and never overspend by rounding.

One node process owns its ledger file. Other processes may open it too (to read budgets, or in
tests), with ``recover=False`` so that they do not settle the owner's open reservations.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "budget.sqlite"
>>> with Ledger(path, node="n1") as ledger:
...     _ = ledger.set_budget("alice", "adult", epsilon=1.0, delta=1e-6)
...     r = ledger.reserve("alice", "adult", "req-1", 0.01)
...     ledger.commit(r)
...     round(ledger.remaining("alice", "adult"), 6)
0.014356
"""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Literal

from trustspace.dp._accounting import epsilon_of, rho_for
from trustspace.errors import ConfigError, LedgerError, PolicyError

__all__ = ["Budget", "Entry", "Ledger", "Reservation", "State"]

State = Literal["reserved", "spent", "released"]

RHO_UNITS = 10**12  # rho in integer 1e-12 units: exact sums; 2^63 units is rho ~ 9.2e6
APPLICATION_ID = 0x54534450  # "TSDP": marks the file as a trustspace DP ledger (PRAGMA)
SCHEMA_VERSION = 1
DEFAULT_TIMEOUT = 10.0  # seconds to wait for another writer; transactions last milliseconds
_MAX_NAME = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    analyst TEXT NOT NULL,
    dataset TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    rho_limit INTEGER NOT NULL CHECK (rho_limit >= 0),
    updated REAL NOT NULL,
    PRIMARY KEY (analyst, dataset)
);
CREATE TABLE IF NOT EXISTS entries (
    analyst TEXT NOT NULL,
    dataset TEXT NOT NULL,
    request_id TEXT NOT NULL,
    rho INTEGER NOT NULL CHECK (rho > 0),
    epsilon REAL,
    delta REAL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'spent', 'released')),
    recovered INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (analyst, dataset, request_id)
);
"""


@dataclass(frozen=True)
class Reservation:
    """Budget held for one request until it is committed or released."""

    analyst: str
    dataset: str
    request_id: str
    rho: float
    epsilon: float | None
    delta: float | None
    created: float


@dataclass(frozen=True)
class Entry:
    """One charge in the ledger (``recovered``: left open by a crash, settled as spent)."""

    analyst: str
    dataset: str
    request_id: str
    rho: float
    epsilon: float | None
    delta: float | None
    state: State
    recovered: bool
    created: float
    updated: float


@dataclass(frozen=True)
class Budget:
    """An analyst's budget on a dataset at one node: the limit and what is used of it.

    Amounts are kept as the ledger's integer units (``RHO_UNITS`` per unit of rho), exactly.
    """

    analyst: str
    dataset: str
    epsilon: float
    delta: float
    limit_units: int
    spent_units: int
    reserved_units: int

    @property
    def rho_limit(self) -> float:
        return self.limit_units / RHO_UNITS

    @property
    def rho_spent(self) -> float:
        return self.spent_units / RHO_UNITS

    @property
    def rho_reserved(self) -> float:
        return self.reserved_units / RHO_UNITS

    @property
    def remaining_units(self) -> int:
        return max(0, self.limit_units - self.spent_units - self.reserved_units)

    @property
    def rho_remaining(self) -> float:
        return self.remaining_units / RHO_UNITS

    @property
    def epsilon_spent(self) -> float:
        """The epsilon at ``delta`` of everything spent or reserved (CKS20 Corollary 13)."""
        return epsilon_of((self.spent_units + self.reserved_units) / RHO_UNITS, self.delta)

    @property
    def epsilon_remaining(self) -> float:
        """The largest epsilon at ``delta`` that one more query can still have."""
        return epsilon_of(self.rho_remaining, self.delta)


def _name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME:
        raise ConfigError(
            f"{what} must be a non-empty string of at most {_MAX_NAME} characters, got {value!r}"
        )
    return value


def _charge_units(rho: object) -> int:
    if isinstance(rho, bool) or not isinstance(rho, int | float | Fraction):
        raise ConfigError(f"rho must be a number, got {rho!r}")
    if not (math.isfinite(float(rho)) and rho > 0):
        raise ConfigError(f"rho must be a finite number > 0, got {rho!r}")
    units = Fraction(rho) * RHO_UNITS
    return -(-units.numerator // units.denominator)  # rounded up: never undercharge


def _optional(what: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number or None, got {value!r}")
    return float(value)


class Ledger:
    """The budget ledger of one node, in an SQLite file (created if missing).

    Args:
        path: the ledger file.
        node: the node's name, for messages.
        timeout: seconds to wait for another process's transaction before :class:`LedgerError`.
        recover: settle reservations left open by a crash as spent (the owning node: True).

    Raises:
        LedgerError: if the file is corrupt, not a trustspace ledger, locked or unwritable.

    Safe for use from several threads (one connection, serialised by a lock) and from several
    processes (each its own ``Ledger``; SQLite's locks serialise the transactions).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        node: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        recover: bool = True,
    ) -> None:
        self.path = Path(path)
        self.node = node
        self._timeout = timeout
        self._owner = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._setup()
            if recover:
                self._recover()
        except sqlite3.Error as exc:
            self.close()
            raise self._error(exc, "opening") from exc

    # --- plumbing ------------------------------------------------------------------------------

    def _where(self) -> str:
        return f" on node {self.node}" if self.node else ""

    def _error(self, exc: sqlite3.Error, doing: str) -> LedgerError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return LedgerError(
                f"DP budget ledger {self.path}{self._where()} is locked by another process "
                f"(waited {self._timeout:g} s while {doing}); nothing was charged. Retry, or "
                "find the process that holds the file open in a long transaction"
            )
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            return LedgerError(
                f"DP budget ledger {self.path}{self._where()} is corrupt or not a trustspace "
                f"ledger ({text}) while {doing}; no DP query can be answered until it is "
                "restored from a backup. Do not delete it: that would reset every analyst's "
                "spent budget"
            )
        return LedgerError(
            f"DP budget ledger {self.path}{self._where()} could not be used while {doing} "
            f"({text}); check that the file and its directory are writable"
        )

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"DP budget ledger {self.path}{self._where()} is closed")
        return self._conn

    def _setup(self) -> None:
        db = self._db()
        app = db.execute("PRAGMA application_id").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables and app != APPLICATION_ID:
            raise sqlite3.DatabaseError("an SQLite file of another application")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
        db.execute("PRAGMA synchronous=FULL")  # fsync at every commit: a return is durable
        if not tables:  # a new file: create the schema (an existing one needs no write lock)
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")  # take the write lock now: check-then-insert is atomic
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _op(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with self._transaction() as db:
                    yield db
            except sqlite3.Error as exc:
                raise self._error(exc, doing) from exc

    def _recover(self) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE entries SET state = 'spent', recovered = 1, updated = ? "
                "WHERE state = 'reserved'",
                (time.time(),),
            )

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- budgets -------------------------------------------------------------------------------

    def set_budget(self, analyst: str, dataset: str, *, epsilon: float, delta: float) -> Budget:
        """Set (or change) the limit of an analyst on a dataset to ``(epsilon, delta)``-DP.

        The limit is stored as ``rho_for(epsilon, delta)`` (CKS20 Corollary 13, inverted),
        rounded down. Spent budget is kept; lowering a limit below it leaves nothing remaining.

        Raises:
            ConfigError: if a name is empty or epsilon/delta are invalid.
            LedgerError: if the file cannot be written.
        """
        a, d = _name("analyst", analyst), _name("dataset", dataset)
        limit = int(Fraction(rho_for(epsilon, delta)) * RHO_UNITS)  # rounded down
        with self._op("reading a budget") as db:  # unchanged (the usual case): no write
            row = db.execute(
                "SELECT epsilon, delta, rho_limit FROM budgets WHERE analyst = ? AND dataset = ?",
                (a, d),
            ).fetchone()
            if row is not None and tuple(row) == (float(epsilon), float(delta), limit):
                return self._budget(db, a, d)
        with self._op("setting a budget") as db:
            db.execute(
                "INSERT INTO budgets (analyst, dataset, epsilon, delta, rho_limit, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (analyst, dataset) DO UPDATE SET "
                "epsilon = excluded.epsilon, delta = excluded.delta, "
                "rho_limit = excluded.rho_limit, updated = excluded.updated",
                (a, d, float(epsilon), float(delta), limit, time.time()),
            )
            return self._budget(db, a, d)

    def _budget(self, db: sqlite3.Connection, analyst: str, dataset: str) -> Budget:
        row = db.execute(
            "SELECT epsilon, delta, rho_limit FROM budgets WHERE analyst = ? AND dataset = ?",
            (analyst, dataset),
        ).fetchone()
        if row is None:
            raise PolicyError(
                f"no DP budget{self._where()} for analyst {analyst!r} on dataset {dataset!r}; "
                "the node's operator sets one in [policy.dp] (epsilon and delta per analyst "
                "per dataset)"
            )
        used = dict(
            db.execute(
                "SELECT state, coalesce(sum(rho), 0) FROM entries "
                "WHERE analyst = ? AND dataset = ? AND state != 'released' GROUP BY state",
                (analyst, dataset),
            ).fetchall()
        )
        return Budget(
            analyst=analyst,
            dataset=dataset,
            epsilon=row[0],
            delta=row[1],
            limit_units=row[2],
            spent_units=used.get("spent", 0),
            reserved_units=used.get("reserved", 0),
        )

    def budget(self, analyst: str, dataset: str) -> Budget:
        """The limit and use of an analyst's budget on a dataset.

        Raises:
            PolicyError: if no budget is set for them.
        """
        a, d = _name("analyst", analyst), _name("dataset", dataset)
        with self._op("reading a budget") as db:
            return self._budget(db, a, d)

    def remaining(self, analyst: str, dataset: str) -> float:
        """The rho that an analyst can still spend on a dataset (see :meth:`budget`)."""
        return self.budget(analyst, dataset).rho_remaining

    # --- charges -------------------------------------------------------------------------------

    def reserve(
        self,
        analyst: str,
        dataset: str,
        request_id: str,
        rho: float,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
    ) -> Reservation:
        """Hold ``rho`` of an analyst's budget for one request, atomically, or refuse.

        Args:
            analyst, dataset: whose budget, on what.
            request_id: the signed query's id; a second reservation under the same id is
                refused (a replayed query is never answered twice).
            rho: the query's total zCDP charge at this node (all its rounds composed).
            epsilon, delta: the query's own (epsilon, delta), stored for reports only.

        Raises:
            PolicyError: if no budget is set, the request id was already charged, or the charge
                would exceed the limit; the message names the analyst, dataset, what remains
                and what to do, and nothing is charged.
            LedgerError: if the file is locked past the timeout or unusable.
        """
        a, d = _name("analyst", analyst), _name("dataset", dataset)
        rid = _name("request_id", request_id)
        units = _charge_units(rho)
        eps, dlt = _optional("epsilon", epsilon), _optional("delta", delta)
        with self._op("reserving budget") as db:
            budget = self._budget(db, a, d)
            row = db.execute(
                "SELECT state FROM entries WHERE analyst = ? AND dataset = ? AND request_id = ?",
                (a, d, rid),
            ).fetchone()
            if row is not None:
                raise PolicyError(
                    f"request {rid!r} of analyst {a!r} on dataset {d!r} was already charged"
                    f"{self._where()} (state {row[0]}); a query is answered once: send a new "
                    "query with a new request id"
                )
            if units > budget.remaining_units:
                refused = PolicyError(self._refusal(budget, rid, units, eps, dlt))
                refused.rule = "dp.budget"  # type: ignore[attr-defined]  # named in ErrorInfo
                raise refused
            now = time.time()
            db.execute(
                "INSERT INTO entries (analyst, dataset, request_id, rho, epsilon, delta, state, "
                "owner, created, updated) VALUES (?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?)",
                (a, d, rid, units, eps, dlt, self._owner, now, now),
            )
        return Reservation(a, d, rid, units / RHO_UNITS, eps, dlt, now)

    def _refusal(
        self, b: Budget, rid: str, units: int, eps: float | None, dlt: float | None
    ) -> str:
        asked = f"rho {units / RHO_UNITS:.6g}"
        if eps is not None:
            asked += f" (epsilon {eps:g}" + (f", delta {dlt:g})" if dlt is not None else ")")
        return (
            f"DP budget exceeded{self._where()}: request {rid!r} needs {asked} but analyst "
            f"{b.analyst!r} has rho {b.rho_remaining:.6g} remaining on dataset {b.dataset!r} "
            f"(limit epsilon {b.epsilon:g} at delta {b.delta:g}, i.e. rho {b.rho_limit:.6g}; "
            f"spent {b.rho_spent:.6g}, reserved {b.rho_reserved:.6g}). The query was not run "
            "and nothing was charged. Ask with a smaller epsilon (at most "
            f"{b.epsilon_remaining:.4g} at delta {b.delta:g} still fits), or ask the node's "
            "operator to raise [policy.dp] for this analyst and dataset"
        )

    def _settle(self, r: Reservation, new: State, doing: str) -> None:
        if not isinstance(r, Reservation):
            raise ConfigError(f"expected a Reservation, got {r!r}")
        with self._op(doing) as db:
            row = db.execute(
                "SELECT state, recovered FROM entries "
                "WHERE analyst = ? AND dataset = ? AND request_id = ?",
                (r.analyst, r.dataset, r.request_id),
            ).fetchone()
            if row is None:
                raise LedgerError(
                    f"DP budget ledger {self.path}{self._where()} has no reservation "
                    f"{r.request_id!r} of analyst {r.analyst!r} on dataset {r.dataset!r}"
                )
            state, recovered = row
            if state == new:
                return  # idempotent: committing twice, or releasing twice, changes nothing
            if state != "reserved":
                why = " (settled as spent when the ledger was reopened after a crash)"
                raise LedgerError(
                    f"reservation {r.request_id!r} of analyst {r.analyst!r} on dataset "
                    f"{r.dataset!r}{self._where()} is already {state}"
                    f"{why if recovered else ''}; it cannot become {new}"
                )
            db.execute(
                "UPDATE entries SET state = ?, updated = ? "
                "WHERE analyst = ? AND dataset = ? AND request_id = ?",
                (new, time.time(), r.analyst, r.dataset, r.request_id),
            )

    def commit(self, reservation: Reservation) -> None:
        """Mark a reservation spent (the node answered). Idempotent.

        Raises:
            LedgerError: if it is unknown or was released.
        """
        self._settle(reservation, "spent", "committing a reservation")

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back (the query was refused before the node computed). Idempotent.

        Raises:
            LedgerError: if it is unknown or already spent (spent budget never comes back).
        """
        self._settle(reservation, "released", "releasing a reservation")

    def budgets(self) -> list[Budget]:
        """Every budget set in this ledger, with its use, by analyst then dataset (one read:
        the metrics scrape and the console call it)."""
        with self._op("listing budgets") as db:
            limits = db.execute(
                "SELECT analyst, dataset, epsilon, delta, rho_limit FROM budgets "
                "ORDER BY analyst, dataset"
            ).fetchall()
            used: dict[tuple[str, str, str], int] = {
                (r[0], r[1], r[2]): r[3]
                for r in db.execute(
                    "SELECT analyst, dataset, state, coalesce(sum(rho), 0) FROM entries "
                    "WHERE state != 'released' GROUP BY analyst, dataset, state"
                ).fetchall()
            }
        return [
            Budget(
                analyst=a,
                dataset=d,
                epsilon=eps,
                delta=dlt,
                limit_units=limit,
                spent_units=used.get((a, d, "spent"), 0),
                reserved_units=used.get((a, d, "reserved"), 0),
            )
            for a, d, eps, dlt, limit in limits
        ]

    def entries(self, analyst: str | None = None, dataset: str | None = None) -> list[Entry]:
        """Every charge, oldest first, optionally of one analyst and/or one dataset."""
        a = None if analyst is None else _name("analyst", analyst)
        d = None if dataset is None else _name("dataset", dataset)
        with self._op("listing entries") as db:
            rows = db.execute(
                "SELECT analyst, dataset, request_id, rho, epsilon, delta, state, recovered, "
                "created, updated FROM entries WHERE (?1 IS NULL OR analyst = ?1) "
                "AND (?2 IS NULL OR dataset = ?2) ORDER BY created, rowid",
                (a, d),
            ).fetchall()
        return [
            Entry(r[0], r[1], r[2], r[3] / RHO_UNITS, r[4], r[5], r[6], bool(r[7]), r[8], r[9])
            for r in rows
        ]
