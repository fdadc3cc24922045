"""gRPC transport, the only layer that imports ``grpc``.

Map:

- ``ca``: the data space CA (``init_ca``, ``issue``, ``make_request``/``sign_request``,
  ``revoke`` and the CRL; its signed serial index in ``_ca_index``), ``Credentials`` and
  certificate identities.
- ``revocation``: ``Revocations``, a server's one reloadable checker (``[tls] revoked`` and
  the CA's signed CRL ``[tls] crl``).
- ``tls``: mutual-TLS server credentials, secure channels, the client pre-flight check.
- ``server``: ``TlsServer`` (mTLS, message limits, health service, graceful drain).
- ``servicers``: the node and aggregator servicers; they only translate.
- ``status``: our exceptions <-> gRPC status codes with ``ErrorInfo`` (node, rule) details.
- ``serde``: protobuf <-> domain values, result JSON, the Paillier word encoding.
- ``clients``: ``NodeClient`` / ``AggregatorClient`` with a deadline on every call.
"""
