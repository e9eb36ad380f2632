"""Structured channel pruning helpers: channel selection, the graph rewrite, reconstruction."""
