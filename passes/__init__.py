"""Built-in passes. Each import below registers one pass by its stable name."""

from onnxopt.passes import cleanup
from onnxopt.passes import prune
from onnxopt.passes import quant

__all__ = ["cleanup", "prune", "quant"]
