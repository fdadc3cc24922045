"""A node's part of federated anonymization: prepared jobs, round vectors, apply and release.

``NodeService`` checks the policy and writes the audit line of every step; this module does
the work. A job is prepared by ``AnonHistogram`` (the spec, the node's tuple counts read once
from its engine) and lives until it is released or ``session_timeout_s`` passes; the
secure-aggregation rounds of the search (``SecAggStep`` with part ``anon.histogram``), the
apply and the release all name it by the request id.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trustspace._cancel import request_tag
from trustspace._files import write_atomic
from trustspace.anon.api import apply as apply_result
from trustspace.anon.federated import LocalCounts, complete_spec
from trustspace.anon.search import Result
from trustspace.anon.spec import AnonSpec
from trustspace.errors import ConfigError, DataError, ProtocolError
from trustspace.node.config import NodeConfig
from trustspace.node.policy import PolicyRefused
from trustspace.transport.types import AnonVector

if TYPE_CHECKING:
    from trustspace.engine import LocalEngine

#: Fewer participants than this reveal too much: with two, each node learns the other's
#: histogram by subtracting its own from the total the analyst can see.
MIN_PARTIES = 3
MAX_JOBS = 64  # prepared anonymization jobs kept in memory at once
OUTPUT_DIR_NAME = "anonymized"  # default output_dir: next to the audit log


def output_dir(config: NodeConfig) -> Path:
    """Where this node writes anonymized rows: ``node.output_dir``, else
    ``anonymized/<node name>/`` in the audit log's folder."""
    return config.output_dir or config.audit_path.parent / OUTPUT_DIR_NAME / config.name


@dataclass
class AnonJob:
    spec: AnonSpec
    counts: LocalCounts
    analyst: str
    request_id: str
    created: float
    output: Path | None = None


class AnonJobs:
    """The node's prepared anonymization jobs (thread-safe)."""

    def __init__(
        self,
        config: NodeConfig,
        engine: LocalEngine,
        clock: Callable[[], float],
        datasets: set[str],
    ) -> None:
        self.node = config.name
        self.config = config
        self.engine = engine
        self._clock = clock
        self._datasets = datasets
        self._jobs: dict[tuple[str, str], AnonJob] = {}
        self._ended: dict[tuple[str, str], str] = {}  # jobs a reload ended, and why
        self._lock = threading.Lock()

    def reconfigure(
        self,
        config: NodeConfig,
        engine: LocalEngine,
        datasets: set[str],
        stale: set[str] | frozenset[str],
        why: str,
    ) -> None:
        """A live reload: the new config and engine; the jobs on ``stale`` datasets end (their
        counts were read from the old data), and their next step is refused saying ``why``."""
        with self._lock:
            self.config, self.engine, self._datasets = config, engine, datasets
            for key in [k for k, j in self._jobs.items() if j.spec.dataset in stale]:
                del self._jobs[key]
                self._ended[key] = why
            while len(self._ended) > MAX_JOBS:
                del self._ended[next(iter(self._ended))]

    # ------------------------------------------------------------------ parsing and checks
    def parse_spec(self, params: Mapping[str, Any], engine: LocalEngine) -> AnonSpec:
        """The spec of a signed ``anonymize`` query (``params["spec"]``), completed from this
        node's own schema exactly as every other party completes it (``complete_spec``)."""
        raw = params.get("spec")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"node {self.node}: the signed anonymization names no spec")
        dataset = raw.get("dataset")
        if dataset not in self._datasets:
            raise ConfigError(
                f"node {self.node} serves no dataset {dataset!r} "
                f"(it serves {', '.join(sorted(self._datasets))})"
            )
        schema = engine.schema(str(dataset))
        try:
            return complete_spec(raw, schema.columns, schema.domains)
        except (ConfigError, DataError) as exc:
            raise ConfigError(f"node {self.node}: {exc}") from None

    def check_parties(self, parties: int) -> None:
        """Refuse fewer than ``MIN_PARTIES`` participants unless the policy allows it."""
        if parties < MIN_PARTIES and not self.config.policy.allow_two_party_anonymization:
            raise PolicyRefused(
                self.node,
                "allow_two_party_anonymization",
                f"federated anonymization over {parties} node(s) would let each node learn "
                f"the other's histogram; at least {MIN_PARTIES} are needed (or set "
                "policy.allow_two_party_anonymization = true at every node)",
            )

    def check_prepare(self, spec: AnonSpec, parties: int) -> None:
        """The policy checks of ``AnonHistogram``: participants, k floor, disclosure mode."""
        self.check_parties(parties)
        floor = self.config.policy.min_k
        if spec.k < floor:
            raise PolicyRefused(
                self.node,
                "min_k",
                f"this node takes part only in releases with k >= {floor}; the request asks "
                f"for k = {spec.k}",
            )
        if spec.disclosure == "base" and not self.config.policy.allow_base_histogram:
            raise PolicyRefused(
                self.node,
                "allow_base_histogram",
                "disclosure='base' would let the aggregator learn the global histogram of the "
                "original quasi-identifier tuples; use disclosure='visited' (the default), or "
                "set policy.allow_base_histogram = true at every node",
            )

    def job(self, analyst: str, request_id: str) -> AnonJob:
        self._expire()
        with self._lock:
            job = self._jobs.get((analyst, request_id))
            ended = self._ended.get((analyst, request_id))
        if job is None and ended is not None:
            raise ProtocolError(
                f"node {self.node}: the anonymization of request {request_id!r} was ended: {ended}"
            )
        if job is None:
            raise ProtocolError(
                f"node {self.node}: no prepared anonymization for request {request_id!r} (it "
                "expired or AnonHistogram was not called); re-run the anonymization"
            )
        return job

    def _expire(self) -> None:
        now = self._clock()
        with self._lock:
            for key in [
                k for k, j in self._jobs.items() if now - j.created > self.config.session_timeout_s
            ]:
                del self._jobs[key]

    # ------------------------------------------------------------------ steps
    def prepare(self, spec: AnonSpec, analyst: str, request_id: str) -> dict[str, Any]:
        """Read this node's tuple counts (one engine query) and keep them for the rounds."""
        if spec.dataset not in self._datasets:
            raise ConfigError(
                f"node {self.node} serves no dataset {spec.dataset!r} "
                f"(it serves {', '.join(sorted(self._datasets))})"
            )
        with request_tag(request_id):  # a Spark source's jobs carry the request's id
            tuples, counts = self.engine.tuple_histogram(spec.dataset, list(spec.columns))
        for j, col in enumerate(spec.columns):
            missing = int(sum(int(c) for t, c in zip(tuples, counts, strict=True) if t[j] is None))
            if missing:
                raise DataError(
                    f"node {self.node}: column {col!r} of dataset {spec.dataset!r} has {missing} "
                    "missing value(s); quasi-identifiers and the sensitive attribute must not "
                    "be missing (fill them, e.g. with '?', and cover that value in the hierarchy)"
                )
        local = LocalCounts(spec, tuples, counts, where=f" at node {self.node}", reveal=False)
        self._expire()
        with self._lock:
            if len(self._jobs) >= MAX_JOBS:
                raise ProtocolError(
                    f"node {self.node}: too many anonymization jobs in progress; retry later"
                )
            self._jobs[(analyst, request_id)] = AnonJob(
                spec, local, analyst, request_id, self._clock()
            )
        return {"node": self.node, "digest": spec.digest()}

    def vector(self, job: AnonJob, vector: AnonVector) -> np.ndarray[Any, Any]:
        """This node's input to one round of the job (uint64)."""
        if vector.digest != job.spec.digest():
            raise ProtocolError(
                f"node {self.node}: the round belongs to another anonymization spec"
            )
        vector.request.check(job.spec.domain)
        return job.counts.vector(vector.request)

    def apply(self, job: AnonJob, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the transformation to this node's rows; write them atomically."""
        if payload.get("digest") != job.spec.digest():
            raise ProtocolError(f"node {self.node}: the transformation belongs to another spec")
        text = payload.get("result")
        if not isinstance(text, str):
            raise ProtocolError(f"node {self.node}: AnonApply carries no result")
        result = Result.from_json(text)
        spec = job.spec
        if result.quasi_identifiers != spec.quasi_identifiers or len(result.levels) != len(
            spec.hierarchies
        ):
            raise ProtocolError(
                f"node {self.node}: the transformation is for quasi-identifiers "
                f"{result.quasi_identifiers}, the job's are {spec.quasi_identifiers}"
            )
        for h, lv in zip(spec.hierarchies, result.levels, strict=True):
            if not 0 <= lv < h.height:
                raise ProtocolError(f"node {self.node}: level {lv} of {h.name!r} out of range")
        with request_tag(job.request_id):
            df = self.engine.rows(spec.dataset)
        out = apply_result(df, result, spec.hierarchies, suppressed=spec.suppressed)
        kept = out if spec.suppressed == "drop" else apply_result(df, result, spec.hierarchies)
        suppressed = len(df) - len(kept)
        folder = output_dir(self.config)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{spec.dataset}-{self.node}-{job.request_id}.csv"
        write_atomic(path, out.to_csv(index=False).encode())
        job.output = path
        if payload.get("release") is False:  # no release follows: forget the job now
            self._forget(job)
        return {"rows_written": len(out), "rows_suppressed": suppressed, "output_path": str(path)}

    def release(self, job: AnonJob) -> bytes:
        """The rows written by ``apply`` (the caller has checked ``release_rows``)."""
        if job.output is None:
            raise ProtocolError(
                f"node {self.node}: nothing to release for request {job.request_id!r}: the "
                "transformation was not applied yet"
            )
        data = job.output.read_bytes()
        self._forget(job)
        return data

    def _forget(self, job: AnonJob) -> None:
        with self._lock:
            self._jobs.pop((job.analyst, job.request_id), None)
