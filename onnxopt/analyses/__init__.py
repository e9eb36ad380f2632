"""Read-only facts about a model, cached by the pass manager."""
