"""A node: one organisation's server over its own data (``trustspace node CONFIG.toml``).

Map: ``config`` (TOML -> frozen dataclasses; each dataset an engine ``DatasetSpec``),
``policy`` (rules, rate limit), ``audit`` (hash-chained, fsync'd JSON lines; ``verify``),
``service`` (the request handler: policy, audit, secure-aggregation sessions, Paillier
encryption), ``server`` (``Node``: composition of credentials, engine, service and gRPC server).
"""
