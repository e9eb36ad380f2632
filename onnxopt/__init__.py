"""onnxopt: a post-training optimizer for ONNX models."""

__version__ = "0.1.0"
