"""A .npz/.npy data file: samples stacked on axis 0, or one sample given as is.

A file whose arrays stack on axis 0 (no scalar, one sample count) is read a batch at a time
(`NpzSource`). A file that cannot be stacked but whose arrays fit the model's inputs exactly,
scalars included (Silero VAD's `sr`, an If model's `cond`, inputs of different leading dims),
is one sample: one feed, as is (`OneSampleSource`). Anything else is one error line naming the
shapes the model expects.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from onnxopt.data.arrayfiles import RowReader, npy_header, npz_headers, open_rows
from onnxopt.data.feeds import (
    DataSource,
    Feed,
    InputSpec,
    batch_counts,
    batch_size_for,
    check_feed,
    static_batch,
)
from onnxopt.errors import InputError

Headers = dict[str, tuple[tuple[int, ...], np.dtype]]


def open_array_file(path: Path, specs: list[InputSpec], batch_size: int | None) -> DataSource:
    """Stacked samples when the arrays stack on axis 0, else one sample when they fit the
    inputs exactly, else InputError naming the expected shapes."""
    headers = file_headers(path, specs)
    problem = stacking_problem(headers, specs)
    if not problem:
        return NpzSource(path, specs, batch_size, headers=headers)
    if fits_one_sample(headers, specs):
        return OneSampleSource(path, specs)
    expected = ", ".join(f"{spec.name} {spec.describe()}" for spec in specs)
    raise InputError(
        f"{path}: {problem}, and the arrays are not one sample either "
        f"(the model expects {expected})"
    )


def file_headers(path: Path, specs: list[InputSpec]) -> Headers:
    """(shape, dtype) per array, from the headers; InputError when a model input is missing."""
    if path.suffix.lower() == ".npy":
        if len(specs) != 1:
            raise InputError(npy_needs_one_input(path, specs))
        headers = {specs[0].name: npy_header(path)}
    else:
        headers = npz_headers(path)
    missing = [spec.name for spec in specs if spec.name not in headers]
    if missing:
        has = ", ".join(headers) or "nothing"
        raise InputError(f"{path}: missing input '{missing[0]}' (file has: {has})")
    return headers


def stacking_problem(headers: Headers, specs: list[InputSpec]) -> str:
    """Why the inputs' arrays have no common sample axis 0, or '' when they have one."""
    for spec in specs:
        if not headers[spec.name][0]:
            return f"'{spec.name}' is a scalar, so samples cannot be stacked on axis 0"
    sizes = sorted({headers[spec.name][0][0] for spec in specs})
    if len(sizes) != 1:
        return f"inputs have different sample counts {sizes} on axis 0"
    return ""


def fits_one_sample(headers: Headers, specs: list[InputSpec]) -> bool:
    """Whether the arrays have exactly the inputs' dtypes and shapes (symbols bound alike)."""
    # Zero-stride views: checked like a feed without reading or allocating the data.
    views = {
        spec.name: np.broadcast_to(np.zeros((), headers[spec.name][1]), headers[spec.name][0])
        for spec in specs
    }
    try:
        check_feed(views, specs, "")
    except InputError:
        return False
    return True


def npy_needs_one_input(path: Path, specs: list[InputSpec]) -> str:
    names = ", ".join(spec.name for spec in specs)
    return (
        f"{path}: a .npy holds one array but the model has {len(specs)} inputs ({names}); use .npz"
    )


class NpzSource(DataSource):
    """Samples stacked along axis 0 of each input's array (.npz, or .npy for one input)."""

    def __init__(
        self,
        path: Path,
        specs: list[InputSpec],
        batch_size: int | None = None,
        *,
        headers: Headers | None = None,
    ) -> None:
        self.path = Path(path)
        self.specs = specs
        headers = headers if headers is not None else file_headers(self.path, specs)
        problem = stacking_problem(headers, specs)
        if problem:
            raise InputError(f"{self.path}: {problem}")
        names = [spec.name for spec in specs]
        self.samples = headers[names[0]][0][0]
        if self.samples == 0:
            raise InputError(f"{self.path}: holds no samples")
        self.ignored = [key for key in headers if key not in names]
        sample_bytes = sum(
            int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for shape, dtype in (headers[name][:2] for name in names)
        )
        self.batch_size = batch_size_for(specs, batch_size, str(self.path), sample_bytes)
        fixed = static_batch(specs) is not None
        self.counts = batch_counts(self.samples, self.batch_size, fixed, str(self.path))
        self.description = f"{self.path.name} ({self.samples} samples)"

    def __iter__(self) -> Iterator[Feed]:
        with contextlib.ExitStack() as stack:
            readers = {spec.name: self._open(stack, spec.name) for spec in self.specs}
            for count in self.counts:
                feed = {name: reader.read(count) for name, reader in readers.items()}
                check_feed(feed, self.specs, str(self.path))
                yield feed

    def _open(self, stack: contextlib.ExitStack, name: str) -> RowReader:
        key = None if self.path.suffix == ".npy" else name
        return stack.enter_context(open_rows(self.path, key))


class OneSampleSource(DataSource):
    """A file holding exactly one feed of the model's inputs: yielded once, as is.

    It has no sample axis, so it cannot be split into a holdout: fidelity measured on it is
    in-sample (the manager says so).
    """

    def __init__(self, path: Path, specs: list[InputSpec]) -> None:
        self.path = Path(path)
        self.specs = specs
        self.description = f"{self.path.name} (one sample)"

    def __iter__(self) -> Iterator[Feed]:
        try:
            if self.path.suffix.lower() == ".npy":
                feed = {self.specs[0].name: np.load(self.path, allow_pickle=False)}
            else:
                with np.load(self.path, allow_pickle=False) as archive:
                    feed = {spec.name: archive[spec.name] for spec in self.specs}
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read data file {self.path}: {exc}") from None
        check_feed(feed, self.specs, str(self.path))
        yield feed
