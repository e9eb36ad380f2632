"""Tiny, realistic models built in code for the test suite, and their ONNX exports.

Each ``make_<name>_onnx(path, seed=0)`` writes an opset-17, IR-version-10 model that
onnxruntime runs and returns the path; the torch modules are the numerical reference.
"""

from tests.zoo.cnn import ConvBnReluNet, DigitsResNet, make_convbnrelu_onnx, make_digits_cnn_onnx
from tests.zoo.control_flow import IfModel, build_if_model, make_if_model_onnx
from tests.zoo.export import export_onnx, randomize_norms, seeded
from tests.zoo.mobilenet import MobileNetV2, make_mobilenet_v2_onnx
from tests.zoo.transformer import TinyTransformer, make_tiny_transformer_onnx

__all__ = [
    "ConvBnReluNet",
    "DigitsResNet",
    "IfModel",
    "MobileNetV2",
    "TinyTransformer",
    "build_if_model",
    "export_onnx",
    "make_convbnrelu_onnx",
    "make_digits_cnn_onnx",
    "make_if_model_onnx",
    "make_mobilenet_v2_onnx",
    "make_tiny_transformer_onnx",
    "randomize_norms",
    "seeded",
]
