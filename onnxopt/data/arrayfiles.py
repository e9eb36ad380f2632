"""Read .npy/.npz arrays a batch of rows at a time: memory follows the batch, not the file.

Shapes come from the .npy headers without reading the data. C-ordered arrays are streamed;
a Fortran-ordered array (rare: numpy writes C order unless asked) is loaded whole.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from onnxopt.errors import InputError


def read_header(handle: IO[bytes], origin: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = npy_format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
    else:
        raise InputError(f"{origin}: unsupported .npy format version {version}")
    if dtype.hasobject:
        raise InputError(f"{origin}: holds Python objects; only numeric arrays are read")
    return tuple(shape), dtype, fortran


class RowReader:
    """Sequential rows of one C-ordered array in a .npy stream (Fortran order: loaded whole)."""

    def __init__(self, handle: IO[bytes], origin: str, load_all: Callable[[], np.ndarray]):
        self.handle = handle
        self.origin = origin
        self.shape, self.dtype, fortran = read_header(handle, origin)
        self.whole = np.ascontiguousarray(load_all()) if fortran else None
        self.position = 0

    def read(self, count: int) -> np.ndarray:
        start, self.position = self.position, self.position + count
        if self.whole is not None:
            return _native(self.whole[start : start + count].copy())
        out = np.empty((count, *self.shape[1:]), self.dtype)
        view = memoryview(out).cast("B")
        filled = 0
        while filled < len(view):
            got = self.handle.readinto(view[filled:])
            if not got:
                raise InputError(f"{self.origin}: file ends early (truncated?)")
            filled += got
        return _native(out)


def _native(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder not in ("=", "|"):
        return array.astype(array.dtype.newbyteorder("="))
    return array


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of every array in an .npz, read from the headers only."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".npy"):
                    with archive.open(member) as handle:
                        shape, dtype, _ = read_header(handle, f"{path}:{member}")
                        headers[member[:-4]] = (shape, dtype)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise InputError(f"cannot read data file {path}: {exc}") from None
    return headers


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of every array in an .npz, read from the headers only."""
    return {key: shape for key, (shape, _) in npz_headers(path).items()}


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with open(path, "rb") as handle:
            shape, dtype, _ = read_header(handle, str(path))
            return shape, dtype
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read data file {path}: {exc}") from None


def npy_shape(path: Path) -> tuple[int, ...]:
    return npy_header(path)[0]


@contextlib.contextmanager
def open_rows(path: Path, key: str | None) -> Iterator[RowReader]:
    """Rows of `key` in an .npz, or of the .npy file itself when `key` is None."""
    origin = str(path) if key is None else f"{path}:{key}"
    with contextlib.ExitStack() as stack:
        if key is None:
            handle = stack.enter_context(path.open("rb"))
            yield RowReader(handle, origin, lambda: np.load(path, allow_pickle=False))
            return
        archive = stack.enter_context(zipfile.ZipFile(path))
        handle = stack.enter_context(archive.open(key + ".npy"))

        def load_all() -> np.ndarray:
            with np.load(path, allow_pickle=False) as whole:
                return whole[key]

        yield RowReader(handle, origin, load_all)
