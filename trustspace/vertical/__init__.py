"""Vertical partitions: protocols between nodes that hold different columns of the same people.

``_party`` holds the common step-machine types (``Message``, ``StepOut``, ``Party``,
``run_local``); ``channel`` seals node-to-node messages end to end so that the relaying
aggregator learns only their sizes. Further modules (PSI, secure products, finishing) build on
these. Pure: no gRPC, no files.
"""
