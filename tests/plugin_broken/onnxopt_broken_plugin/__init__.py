"""A plugin package for onnxopt's tests whose entry points are each broken in one way."""
