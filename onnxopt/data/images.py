"""Image folders as model feeds, with a declared preprocessing (ImageNet defaults).

Per image, in this order: convert to RGB (or L for 1-channel inputs) -> resize so the shorter
side is `resize` -> center-crop to `crop` -> to float -> multiply by `scale` -> subtract `mean`,
divide by `std` (per channel, in RGB order) -> reorder channels to `order` -> lay out as
`layout`. Inputs of an integer type get the cropped pixels unscaled and unnormalized.

Defaults (torchvision's ImageNet evaluation): crop = the model's static H x W (else 224),
resize = crop / 0.875 (256 for 224), bilinear, scale 1/255, mean (0.485, 0.456, 0.406),
std (0.229, 0.224, 0.225), RGB, layout from the input's shape (3 channels on axis 1: NCHW,
on axis 3: NHWC). Needs Pillow (`pip install 'onnxopt[images]'`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from onnxopt.data.feeds import DataSource, Feed, InputSpec, batch_counts, batch_size_for, check_feed
from onnxopt.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875
DEFAULT_CROP = 224


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image file becomes one sample; every field has an ImageNet default."""

    resize: int | None = None
    """Shorter side after resizing; default crop/0.875; 0 = no resize."""
    crop: tuple[int, int] | None = None
    """Center crop (height, width); default the input's static H x W, else 224 x 224."""
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    scale: float = 1 / 255
    """Multiplies the pixel values (0..255) before mean/std."""
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layout: Literal["auto", "NCHW", "NHWC"] = "auto"
    order: Literal["RGB", "BGR"] = "RGB"


_CHOICES = {
    "interpolation": ("bilinear", "bicubic", "nearest"),
    "layout": ("auto", "NCHW", "NHWC"),
    "order": ("RGB", "BGR"),
}


PREPROCESS_KEY = "onnxopt.preprocess"
"""A model's `metadata_props` entry declaring how images become its input (the `--preprocess`
text): image folders use it instead of ImageNet's defaults, so `--calib images/` needs no flag."""


def declared_preprocess(model: onnx.ModelProto) -> ImagePreprocess | None:
    """The preprocessing the model declares under `PREPROCESS_KEY`, else None."""
    for entry in model.metadata_props:
        if entry.key == PREPROCESS_KEY:
            try:
                return parse_preprocess(entry.value)
            except InputError as exc:
                raise InputError(f"the model's metadata '{PREPROCESS_KEY}': {exc}") from None
    return None


def parse_preprocess(text: str | None) -> ImagePreprocess:
    """Parse `key=value,...` (e.g. `resize=256,crop=224,mean=0.5/0.5/0.5,order=BGR`)."""
    values: dict[str, object] = {}
    fields = [f.name for f in dataclasses.fields(ImagePreprocess)]
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise InputError(f"bad preprocess option '{item}' (valid keys: {', '.join(fields)})")
        try:
            values[key] = _convert(key, value.strip())
        except ValueError:
            raise InputError(f"bad value for preprocess option {key}: '{value}'") from None
    return ImagePreprocess(**values)


def _convert(key: str, value: str) -> object:
    if key in _CHOICES:
        match = {c.lower(): c for c in _CHOICES[key]}.get(value.lower())
        if match is None:
            raise ValueError(value)
        return match
    if key == "resize":
        return int(value)
    if key == "crop":
        sizes = [int(v) for v in value.lower().split("x")]
        if len(sizes) not in (1, 2) or min(sizes) <= 0:
            raise ValueError(value)
        return (sizes[0], sizes[-1])
    if key == "scale":
        return float(value)
    numbers = tuple(float(v) for v in value.split("/"))
    if key == "std" and min(numbers) <= 0:
        raise ValueError(value)
    return numbers


def _layout(spec: InputSpec, wanted: str) -> str:
    if len(spec.shape) != 4:
        raise InputError(f"input '{spec.name}' {spec.describe()} is not an image batch (4-D)")
    if wanted != "auto":
        return wanted
    if spec.shape[3] in (1, 3) and spec.shape[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


class ImageFolderSource(DataSource):
    """Image files under a folder (recursively, sorted by path), preprocessed and batched."""

    def __init__(
        self,
        path: Path,
        specs: list[InputSpec],
        batch_size: int | None = None,
        preprocess: ImagePreprocess | None = None,
    ) -> None:
        try:
            from PIL import Image
        except ImportError:
            raise InputError(
                "reading an image folder needs Pillow: pip install 'onnxopt[images]'"
            ) from None
        self._image = Image
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise InputError(f"{path}: image folders feed single-input models; inputs: {names}")
        self.path = Path(path)
        self.spec = specs[0]
        self.specs = specs
        self.options = preprocess or ImagePreprocess()
        self.layout = _layout(self.spec, self.options.layout)
        channel_axis = 1 if self.layout == "NCHW" else 3
        hw = self.spec.shape[2:] if self.layout == "NCHW" else self.spec.shape[1:3]
        self.channels = self.spec.shape[channel_axis]
        if self.channels not in (1, 3):
            raise InputError(
                f"input '{self.spec.name}' {self.spec.describe()} has {self.channels} channels on "
                f"axis {channel_axis} ({self.layout}); images give 1 or 3 (set layout=...)"
            )
        static_hw = all(isinstance(d, int) for d in hw)
        self.crop = self.options.crop or (tuple(hw) if static_hw else (DEFAULT_CROP, DEFAULT_CROP))
        resize = self.options.resize
        self.resize = round(max(self.crop) / CROP_FRACTION) if resize is None else resize
        self._check_stats()
        self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise InputError(f"{self.path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        pixels = self.channels * self.crop[0] * self.crop[1]
        self.batch_size = batch_size_for(specs, batch_size, str(self.path), 4 * pixels)
        fixed = isinstance(self.spec.shape[0], int)
        self.counts = batch_counts(len(self.files), self.batch_size, fixed, str(self.path))
        self.description = f"{self.path.name}/ ({len(self.files)} images)"

    def _check_stats(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self.options, name)
            if len(values) != self.channels:
                raise InputError(
                    f"preprocess {name} has {len(values)} values; input '{self.spec.name}' "
                    f"has {self.channels} channels"
                )

    def __iter__(self) -> Iterator[Feed]:
        start = 0
        for count in self.counts:
            files = self.files[start : start + count]
            start += count
            feed = {self.spec.name: np.stack([self.load(f) for f in files])}
            check_feed(feed, self.specs, f"{self.path} (near {files[0].name})")
            yield feed

    def load(self, file: Path) -> np.ndarray:
        """One preprocessed sample (no batch axis) in the input's dtype and layout."""
        try:
            with self._image.open(file) as image:
                pixels = self._resize_crop(image.convert("RGB" if self.channels == 3 else "L"))
        except OSError as exc:
            raise InputError(f"cannot read image {file}: {exc}") from None
        array = np.asarray(pixels)
        if array.ndim == 2:
            array = array[:, :, np.newaxis]
        if self.spec.dtype.kind == "f":
            options = self.options
            array = array.astype(np.float32) * np.float32(options.scale)
            array = (array - np.float32(options.mean)) / np.float32(options.std)
        if self.options.order == "BGR" and self.channels == 3:
            array = array[:, :, ::-1]
        if self.layout == "NCHW":
            array = array.transpose(2, 0, 1)
        return np.ascontiguousarray(array, dtype=self.spec.dtype)

    def _resize_crop(self, image):
        resample = {
            "bilinear": self._image.Resampling.BILINEAR,
            "bicubic": self._image.Resampling.BICUBIC,
            "nearest": self._image.Resampling.NEAREST,
        }[self.options.interpolation]
        if self.resize:
            width, height = image.size
            short = min(width, height)
            size = (round(width * self.resize / short), round(height * self.resize / short))
            image = image.resize(size, resample)
        crop_h, crop_w = self.crop
        width, height = image.size
        if width < crop_w or height < crop_h:
            raise InputError(
                f"image {width}x{height} (after resize) is smaller than the crop {crop_w}x{crop_h}"
            )
        left, top = round((width - crop_w) / 2), round((height - crop_h) / 2)
        return image.crop((left, top, left + crop_w, top + crop_h))
