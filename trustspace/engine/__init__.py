"""trustspace.engine (being built)."""
