"""Vertical partitions: nodes holding different columns about the same people."""
