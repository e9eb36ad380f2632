"""Built-in passes. Each import below registers one pass by its stable name."""

from onnxopt.passes import cleanup, prune, quant, share

__all__ = ["cleanup", "prune", "quant", "share"]
