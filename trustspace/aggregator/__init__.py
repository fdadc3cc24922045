"""The aggregator (``trustspace aggregator CONFIG.toml``).

Map: ``config`` (``load_aggregator_config``: TOML -> ``AggregatorConfig`` with its
``NodeAddress`` list), ``service`` (``AggregatorService``: drives secure-aggregation rounds over
the nodes and the Paillier path with disclosure control), ``server`` (``Aggregator``:
composition with the gRPC server).
"""
