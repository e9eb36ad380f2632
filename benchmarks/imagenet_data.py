"""ImageNet-style input crops from real photos that ship inside scikit-image and scikit-learn.

No download: only photos bundled in the installed wheels are used. Crop ``i`` is cut from
``PHOTOS[i % len(PHOTOS)]`` with a random-resized-crop (scale, aspect ratio, horizontal flip)
drawn from an RNG seeded by ``(seed, i)``, so crop ``i`` is the same whatever ``n`` is and
callers draw disjoint sets with disjoint index ranges (``offset``) or different seeds.

``photos=`` picks another list of photos (crop ``i`` from ``photos[i % len(photos)]``):
``CALIBRATION_PHOTOS`` and ``OTHER_PHOTOS`` share no photo, so crops of the second set show
nothing a model calibrated on the first has seen.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "china",
    "flower",
    "motorcycle",
    "camera",
    "coins",
    "clock",
    "hubble_deep_field",
    "immunohistochemistry",
)
"""Photo names; gray ones (camera, coins, clock) are replicated to RGB."""

CALIBRATION_PHOTOS = (
    "astronaut",
    "coffee",
    "rocket",
    "china",
    "camera",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "moon",
)
"""Photos to calibrate on (and to draw new crops of the calibration photos from)."""
OTHER_PHOTOS = ("chelsea", "flower", "motorcycle", "clock", "brick", "grass", "gravel", "page")
"""Photos that share none with ``CALIBRATION_PHOTOS``: out-of-sample images."""
KNOWN_PHOTOS = tuple(dict.fromkeys(PHOTOS + CALIBRATION_PHOTOS + OTHER_PHOTOS))

LARGEST_SIDE = 1024
"""Larger photos (retina: 1411x1411) are downscaled by an integer factor below this; crops
are resized to 224 anyway."""

SCALE = (0.25, 1.0)
"""Range of the crop's area as a fraction of the photo's area."""
RATIO = (3 / 4, 4 / 3)
"""Range of the crop's width/height ratio (drawn log-uniformly)."""


def _load(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        return load_sample_images().images[("china", "flower").index(name)]
    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """The photo ``name`` (one of ``KNOWN_PHOTOS``) as an HxWx3 uint8 array."""
    if name not in KNOWN_PHOTOS:
        raise ValueError(f"unknown photo {name!r}; valid: {', '.join(KNOWN_PHOTOS)}")
    image = np.asarray(_load(name), dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    factor = math.ceil(max(image.shape[:2]) / LARGEST_SIDE)
    if factor > 1:
        image = np.asarray(Image.fromarray(image).reduce(factor))
    return image


def _crop_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random-resized crop inside the photo."""
    for _ in range(10):
        area = height * width * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def crop(image: np.ndarray, rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """One augmented crop of ``image`` as a normalized 3x``size``x``size`` float32 array."""
    top, left, h, w = _crop_box(image.shape[0], image.shape[1], rng)
    patch = Image.fromarray(image[top : top + h, left : left + w])
    pixels = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    pixels = (pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


def photo_crops(
    n: int, *, seed: int, size: int = 224, offset: int = 0, photos: tuple[str, ...] = PHOTOS
) -> np.ndarray:
    """Crops ``offset`` .. ``offset + n - 1`` for ``seed``: (n, 3, size, size) float32, NCHW.

    Crop ``i`` comes from ``photos[i % len(photos)]``. Normalized with the ImageNet mean and
    std, as torchvision's ImageNet models expect.
    """
    crops = np.empty((n, 3, size, size), dtype=np.float32)
    for k, index in enumerate(range(offset, offset + n)):
        rng = np.random.default_rng([seed, index])
        crops[k] = crop(load_photo(photos[index % len(photos)]), rng, size)
    return crops


def photo_names(n: int, *, offset: int = 0, photos: tuple[str, ...] = PHOTOS) -> list[str]:
    """The source photo of each crop that ``photo_crops(n, offset=offset, photos=photos)``
    returns."""
    return [photos[index % len(photos)] for index in range(offset, offset + n)]
