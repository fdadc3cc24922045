"""trustspace.transport (being built)."""
