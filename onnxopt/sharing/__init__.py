"""Weight sharing: exact deduplication and data-aware k-means codebooks.

`run.py` (`ShareRun`) drives it; `passes/share.py` calls it. The codebook format in the graph
lives in `onnxopt.ir.codebook` (quant keeps codebooks too).
"""
