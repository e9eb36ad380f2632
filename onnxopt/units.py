"""Human-readable sizes and counts, one unit system for the whole tool: bytes in binary
(IEC) units (KiB, MiB, GiB, TiB: powers of 1024), counts in SI steps (K, M, G). Imports
nothing of onnxopt: error messages at the bottom and tables at the top use it alike."""

from __future__ import annotations


def human_bytes(count: float) -> str:
    """`512 B`, `1.5 KiB`, `12.3 MiB`, ... (one decimal above bytes)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(count: float) -> str:
    """`950`, `1.20K`, `3.40M`, `1.10G`."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{unit}"
    return f"{count:.0f}"
