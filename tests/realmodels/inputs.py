"""Realistic inputs for the real models, made without the network.

Every maker takes `(n, split)`: split "calib" and split "heldout" draw from disjoint material
(other photos, other words, other files, other seeds), so a number measured on "heldout" is
out of sample for any pass fitted on "calib".

- photos: the photos bundled with scikit-image/scikit-learn (`benchmarks.imagenet_data`),
  calibration photos vs other photos;
- text images: words rendered with PIL's default (FreeType) font, words of the Zen of Python
  for calibration and of the stdlib's `json` docs for held-out;
- file bytes (Magika): files of the Python standard library, modules a-m vs n-z;
- audio (Silero VAD): synthetic speech-like 16 kHz signals (harmonic voiced syllables with a
  moving pitch and formants, noise bursts, pauses), seeded per split.
"""

from __future__ import annotations

import ast
import codecs
import functools
import importlib.util
import math
import sysconfig
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks.imagenet_data import (
    CALIBRATION_PHOTOS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    OTHER_PHOTOS,
    load_photo,
    photo_crops,
)

SPLITS = ("calib", "heldout")
SEEDS = {"calib": 101, "heldout": 202}


def _split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return SEEDS[split]


# --- words and rendered text ---------------------------------------------------------------


@functools.cache
def words(split: str) -> tuple[str, ...]:
    """Words to render: the Zen of Python (calib) or the `json` module's docs (heldout)."""
    _split(split)
    if split == "calib":  # `import this` would print it: read the module's string instead
        tree = ast.parse(Path(importlib.util.find_spec("this").origin).read_text())
        value = next(n.value.value for n in tree.body if isinstance(n, ast.Assign))
        text = codecs.decode(value, "rot13")
    else:
        import json

        text = json.__doc__ + json.dumps.__doc__
    found = [w.strip(".,:;!?()'\"`*-") for w in text.split()]
    return tuple(dict.fromkeys(w for w in found if w.isascii() and 2 <= len(w) <= 12))


def text_line(rng: np.random.Generator, split: str, count: int) -> str:
    pool = words(split)
    return " ".join(pool[i] for i in rng.integers(0, len(pool), count))


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render_line(text: str, height: int, rng: np.random.Generator) -> Image.Image:
    """`text` in dark ink on a light, slightly uneven background, `height` pixels tall."""
    font = _font(int(height * rng.uniform(0.6, 0.8)))
    left, top, right, bottom = font.getbbox(text)
    width = right - left + int(height * 0.4)
    paper = int(rng.integers(200, 256))
    image = Image.new("RGB", (max(width, height), height), (paper, paper, paper - 10))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    ImageDraw.Draw(image).text(
        (int(height * 0.2) - left, (height - (bottom - top)) // 2 - top), text, fill=ink, font=font
    )
    return image


def _paddle_norm(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32 in [-1, 1] (PaddleOCR's rec/cls normalization)."""
    return ((pixels.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


def _imagenet_norm(pixels: np.ndarray) -> np.ndarray:
    scaled = (pixels.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(scaled.transpose(2, 0, 1), dtype=np.float32)


def _fit_line(image: Image.Image, height: int, width: int) -> np.ndarray:
    """Resize to `height` keeping the ratio (at most `width` wide), pad right with zeros,
    as PaddleOCR's recognizer preprocessing does."""
    scaled = min(width, max(1, round(image.width * height / image.height)))
    resized = np.asarray(image.resize((scaled, height), Image.Resampling.BILINEAR))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :scaled] = _paddle_norm(resized)
    return out


def text_lines(n: int, split: str, height: int = 48, width: int = 320) -> np.ndarray:
    """(n, 3, height, width): one rendered line of 1-4 words each (the OCR recognizer's input)."""
    rng = np.random.default_rng(_split(split))
    lines = [render_line(text_line(rng, split, int(rng.integers(1, 5))), 64, rng) for _ in range(n)]
    return np.stack([_fit_line(line, height, width) for line in lines])


def upright_or_flipped(n: int, split: str, height: int = 48, width: int = 192) -> np.ndarray:
    """(n, 3, height, width): text lines, every second one turned 180 degrees (the OCR
    direction classifier's input)."""
    rng = np.random.default_rng(_split(split) + 1)
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        line = render_line(text_line(rng, split, int(rng.integers(1, 3))), 64, rng)
        if i % 2:
            line = line.rotate(180)
        out[i] = _fit_line(line, height, width)
    return out


def text_pages(n: int, split: str, height: int = 256, width: int = 256) -> np.ndarray:
    """(n, 3, height, width): lines of text pasted on a lightened photo crop, ImageNet-normalized
    (the OCR detector's input)."""
    rng = np.random.default_rng(_split(split) + 2)
    photos = CALIBRATION_PHOTOS if split == "calib" else OTHER_PHOTOS
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        photo = _at_least(load_photo(photos[i % len(photos)]), height, width)
        top = int(rng.integers(0, photo.shape[0] - height + 1))
        left = int(rng.integers(0, photo.shape[1] - width + 1))
        patch = photo[top : top + height, left : left + width].astype(np.float32)
        page = Image.fromarray((128 + patch / 2).astype(np.uint8))
        y = int(rng.integers(4, 24))
        while y < height - 24:
            line = render_line(text_line(rng, split, int(rng.integers(1, 4))), 24, rng)
            page.paste(
                line.crop((0, 0, min(line.width, width - 8), 24)), (int(rng.integers(0, 8)), y)
            )
            y += int(rng.integers(28, 56))
        out[i] = _imagenet_norm(np.asarray(page))
    return out


def _at_least(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    """`photo` scaled up, keeping its ratio, until it covers height x width."""
    scale = max(height / photo.shape[0], width / photo.shape[1])
    if scale <= 1:
        return photo
    size = (math.ceil(photo.shape[1] * scale), math.ceil(photo.shape[0] * scale))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))


def rotated_photos(n: int, split: str, size: int = 224) -> np.ndarray:
    """(n, 3, size, size): photo crops turned by 0/90/180/270 degrees in turn (the orientation
    classifier's input)."""
    photos = CALIBRATION_PHOTOS if split == "calib" else OTHER_PHOTOS
    crops = photo_crops(n, seed=_split(split), size=size, photos=photos)
    return np.stack([np.rot90(c, i % 4, axes=(1, 2)) for i, c in enumerate(crops)]).copy()


def layout_pages(n: int, split: str, height: int = 800, width: int = 608) -> np.ndarray:
    """(n, 3, height, width): document-like pages (text blocks and a photo figure) on white,
    ImageNet-normalized (the layout detector's input)."""
    rng = np.random.default_rng(_split(split) + 3)
    photos = CALIBRATION_PHOTOS if split == "calib" else OTHER_PHOTOS
    out = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        page = Image.new("RGB", (width, height), (250, 250, 248))
        figure = Image.fromarray(load_photo(photos[i % len(photos)])).resize((360, 240))
        top = int(rng.integers(300, 500))
        page.paste(figure, (124, top))
        y = 40
        while y < height - 40:
            if top - 30 < y < top + 260:
                y = top + 270
                continue
            line = render_line(text_line(rng, split, int(rng.integers(4, 9))), 22, rng)
            page.paste(line.crop((0, 0, min(line.width, width - 80), 22)), (40, y))
            y += 26 + (40 if rng.random() < 0.15 else 0)
        out[i] = _imagenet_norm(np.asarray(page))
    return out


# --- file bytes ------------------------------------------------------------------------------

MAGIKA_BLOCK, MAGIKA_SIDE, MAGIKA_PAD = 4096, 1024, 256
"""Magika standard_v3_3 (its config.min.json): the first and last 1024 bytes of the first and
last 4096-byte blocks, whitespace-stripped, padded with token 256."""
FILE_SUFFIXES = (".py", ".txt", ".json", ".cfg", ".html", ".xml", ".csv", ".pyc")


@functools.cache
def stdlib_files(split: str) -> tuple[Path, ...]:
    """Files of the standard library of the given kinds: top-level names a-m (calib) or n-z."""
    _split(split)
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in FILE_SUFFIXES or "site-packages" in path.parts or not path.is_file():
            continue
        first = path.relative_to(root).parts[0].lower()
        if (first[0] <= "m") == (split == "calib"):
            found.append(path)
    return tuple(found)


def magika_features(content: bytes) -> np.ndarray:
    beginning = content[:MAGIKA_BLOCK].lstrip()[:MAGIKA_SIDE]
    end = content[-MAGIKA_BLOCK:].rstrip()[-MAGIKA_SIDE:]
    out = np.full(2 * MAGIKA_SIDE, MAGIKA_PAD, np.int32)
    out[: len(beginning)] = np.frombuffer(beginning, np.uint8)
    if end:
        out[2 * MAGIKA_SIDE - len(end) :] = np.frombuffer(end, np.uint8)
    return out


def file_bytes(n: int, split: str) -> np.ndarray:
    """(n, 2048) int32: Magika's features of n standard-library files (a seeded pick)."""
    files = stdlib_files(split)
    rng = np.random.default_rng(_split(split) + 4)
    picked = rng.choice(len(files), size=min(n, len(files)), replace=False)
    return np.stack([magika_features(files[i].read_bytes()) for i in sorted(picked)])


# --- audio -----------------------------------------------------------------------------------

RATE = 16000
VAD_CHUNK, VAD_CONTEXT = 512, 64
"""Silero VAD at 16 kHz: 512-sample chunks, each with the 64 samples before it prepended."""


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Syllables (voiced harmonics under three moving formants, fricative noise) and pauses."""
    total = int(seconds * RATE)
    signal = rng.normal(0, 0.002, total)
    position = int(rng.integers(0, RATE // 4))
    while position < total:
        length = int(rng.uniform(0.12, 0.35) * RATE)
        t = np.arange(length) / RATE
        pitch = rng.uniform(90, 230) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
        phase = 2 * np.pi * np.cumsum(pitch) / RATE
        formants = rng.uniform((300, 900, 2200), (800, 2000, 3200))
        voiced = np.zeros(length)
        for k in range(1, 30):
            frequency = k * pitch.mean()
            if frequency > RATE / 2 - 500:
                break
            gain = sum(np.exp(-(((frequency - f) / 120.0) ** 2)) for f in formants) + 0.02
            voiced += gain / k * np.sin(k * phase)
        envelope = np.sin(np.pi * t / t[-1]) ** 2
        syllable = voiced * envelope * rng.uniform(0.05, 0.4)
        if rng.random() < 0.3:
            syllable += rng.normal(0, 0.03, length) * envelope
        stop = min(total, position + length)
        signal[position:stop] += syllable[: stop - position]
        position = stop + int(rng.uniform(0.02, 0.1 if rng.random() < 0.8 else 0.6) * RATE)
    return signal.astype(np.float32)


def vad_frames(signal: np.ndarray) -> np.ndarray:
    """(frames, 576): each 512-sample chunk with its 64-sample context (zeros before the start)."""
    padded = np.concatenate([np.zeros(VAD_CONTEXT, np.float32), signal])
    count = (len(padded) - VAD_CONTEXT) // VAD_CHUNK
    return np.stack(
        [padded[i * VAD_CHUNK : i * VAD_CHUNK + VAD_CHUNK + VAD_CONTEXT] for i in range(count)]
    )


def vad_feeds(n: int, split: str, frames: int = 16) -> list[dict[str, np.ndarray]]:
    """n feeds of Silero's sequence model: `frames` chunks of one clip, zero LSTM state."""
    rng = np.random.default_rng(_split(split) + 5)
    seconds = frames * VAD_CHUNK / RATE + 0.01
    zero = np.zeros((1, 1, 128), np.float32)
    return [
        {"input": vad_frames(speech_like(seconds, rng))[:frames], "h": zero, "c": zero}
        for _ in range(n)
    ]
