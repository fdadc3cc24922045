"""trustspace.node (being built)."""
