"""trustspace.secagg (being built)."""
