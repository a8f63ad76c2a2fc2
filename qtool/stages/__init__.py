"""One function per stage over one cached-stage helper; the CLI and `qtool reproduce` call the same functions."""
