"""ONNX Runtime: sessions, the tensor-streaming probe, the fidelity scorer, latency and memory."""
