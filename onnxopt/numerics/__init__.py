"""Numpy-only math shared by the engines: error-feedback rounding, streaming histograms."""
