"""trustspace.anon (being built)."""
