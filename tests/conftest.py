"""Shared fixtures: a throw-away CA with node, aggregator and analyst identities in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustspace.transport.ca import init_ca, issue


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA directory with identities n1, n2, n3 (node), agg (aggregator), alice, bob (analyst)
    and a second, foreign CA ``other`` with its own ``mallory`` (aggregator) and ``eve``
    (analyst). Session-scoped: certificates are cheap but need not be remade per test."""
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca")
    for name, role in (
        ("n1", "node"),
        ("n2", "node"),
        ("n3", "node"),
        ("agg", "aggregator"),
        ("alice", "analyst"),
        ("bob", "analyst"),
    ):
        issue(root / "ca", name, role)
    init_ca(root / "other", name="foreign-ca")
    issue(root / "other", "mallory", "aggregator")
    issue(root / "other", "eve", "analyst")
    return root
