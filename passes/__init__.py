"""Built-in passes, one a module: options + contract + a call into its engine.

`BUILTIN_PASSES` lists them; `onnxopt.infra.registry` registers them by their stable names.
"""

from onnxopt.passes.cleanup import CleanupPass
from onnxopt.passes.distill import DistillPass
from onnxopt.passes.prune import PrunePass
from onnxopt.passes.quant import QuantPass
from onnxopt.passes.share import SharePass
from onnxopt.passes.upgrade import UpgradePass

BUILTIN_PASSES = (CleanupPass, PrunePass, QuantPass, SharePass, DistillPass, UpgradePass)

__all__ = [
    "BUILTIN_PASSES",
    "CleanupPass",
    "DistillPass",
    "PrunePass",
    "QuantPass",
    "SharePass",
    "UpgradePass",
]
