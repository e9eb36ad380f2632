"""Structured channel pruning: importance, channel selection, the graph rewrite, the refit.

`run.py` (`PruneRun`) drives it; `passes/prune.py` calls it. Where prune chooses its
channels: `select.py`.
"""
