"""The aggregator (``trustspace aggregator CONFIG.toml``).

Map: ``service`` (``AggregatorService``: drives secure-aggregation rounds over the nodes and the
Paillier path with disclosure control), ``server`` (``Aggregator``: composition with the gRPC
server). Its configuration lives in ``trustspace.node.config``.
"""
