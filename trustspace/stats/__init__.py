"""trustspace.stats (being built)."""
