"""A plugin package for onnxopt's tests: passes that live outside onnxopt."""
