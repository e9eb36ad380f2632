"""The onnx backend test corpus run: every pass on ~1,900 single-op and small models."""
