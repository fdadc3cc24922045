"""trustspace: privacy-preserving computation for trusted data spaces.

Map of the package (layers import downwards only):

- ``trustspace.cli``, ``trustspace.api`` (``Federation``): analyst and operator entry points.
- ``trustspace.testing`` (``LocalSpace``): a whole data space as real processes on this
  machine, for tests, benchmarks and the demo.
- ``trustspace.node``, ``trustspace.aggregator``: services composed of config, policy, audit,
  engine and transport.
- ``trustspace.transport``: gRPC only (servicers, stubs, mutual TLS, proto<->domain serde).
- ``trustspace.secagg``, ``trustspace.stats``, ``trustspace.anon``: protocols, pure logic, no I/O.
- ``trustspace.engine``: a node's local query engine over its own files (DuckDB).
- ``trustspace.crypto``: hazmat primitives (Paillier, encodings, Shamir, PRG, key agreement);
  ``trustspace.paillier`` is the safe Paillier API on top of it.
- ``trustspace.errors``: the exceptions, all derived from ``TrustspaceError``;
  ``trustspace._config``: the TOML-table helpers and ``[tls]`` shared by the configs.
"""

from __future__ import annotations

from typing import Any

from trustspace.errors import TrustspaceError

__version__ = "0.1.0"
__all__ = ["Federation", "TrustspaceError", "__version__"]


def __getattr__(name: str) -> Any:
    # Federation pulls in grpc; import it lazily so `import trustspace.paillier` stays light.
    if name == "Federation":
        from trustspace.api import Federation  # type: ignore[import-not-found,unused-ignore]

        return Federation
    raise AttributeError(f"module 'trustspace' has no attribute {name!r}")
