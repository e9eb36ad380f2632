"""Scripts that build the bundled example model and the benchmark inputs; run from the repo root
as ``python -m benchmarks.<script>``. Not part of the onnxopt package and not run by pytest."""
