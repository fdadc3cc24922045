"""gRPC transport, the only layer that imports ``grpc``.

Map:

- ``ca``: the data space CA (``init_ca``, ``issue``), ``Credentials`` and certificate identities.
- ``tls``: mutual-TLS server credentials, secure channels, the client pre-flight check.
- ``server``: ``TlsServer`` (mTLS, message limits, health service, graceful drain).
- ``servicers``: the node and aggregator servicers; they only translate.
- ``status``: our exceptions <-> gRPC status codes with ``ErrorInfo`` (node, rule) details.
- ``serde``: protobuf <-> domain values, result JSON, the Paillier word encoding.
- ``clients``: ``NodeClient`` / ``AggregatorClient`` with a deadline on every call.
"""
