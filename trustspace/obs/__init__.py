"""Observability of nodes and the aggregator: log handlers (``logs``) and Prometheus metrics
(``metrics``: ``NodeMetrics``, ``AggregatorMetrics``, one registry per host).

See docs/operations.md, sections "Logs" and "Metrics".
"""

from trustspace.obs.metrics import AggregatorMetrics, NodeMetrics

__all__ = ["AggregatorMetrics", "NodeMetrics"]
