"""trustspace.aggregator (being built)."""
