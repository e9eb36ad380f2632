"""Load and save ONNX models safely.

Loading treats the file as untrusted: external-data locations must stay inside the model's
folder, and the referenced files must exist and be large enough. Saving is atomic (temporary
files in the target folder, then rename), refuses to overwrite the input model or its data
files, and switches to external data when the model would exceed protobuf's 2 GB limit.
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxopt.errors import InputError
from onnxopt.ir.limits import check_stored_size, memory_budget, tensor_bytes
from onnxopt.ir.tensors import external_info, iter_stored_tensors
from onnxopt.units import human_bytes

# Stay well under protobuf's hard 2 GiB message limit: other fields add to the tensors' bytes.
PROTOBUF_SAFE_BYTES = 1_800_000_000


@dataclass
class LoadedModel:
    """A model read from disk with the files it came from (protected from being overwritten)."""

    proto: onnx.ModelProto
    path: Path | None = None
    external_files: list[Path] = field(default_factory=list)

    @property
    def source_files(self) -> list[Path]:
        return [self.path, *self.external_files] if self.path else []


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read an ONNX model and its external data; raise InputError with one line on bad input."""
    model_path = Path(path)
    if not model_path.exists():
        raise InputError(f"model file not found: {model_path}")
    if not model_path.is_file():
        raise InputError(f"not a file: {model_path}")
    try:
        proto = onnx.load_model(str(model_path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InputError(f"not a valid ONNX model (protobuf parse failed): {model_path}") from exc
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        raise InputError(
            f"not a valid ONNX model (no IR version, graph or opset import): {model_path}"
        )
    external = _check_external_data(proto, model_path.parent.resolve())
    if external:
        try:
            onnx.load_external_data_for_model(proto, str(model_path.parent))
        except (onnx.checker.ValidationError, OSError) as exc:  # onnx's own location checks
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot read the external data of {model_path}: {first}") from exc
    return LoadedModel(proto=proto, path=model_path.resolve(), external_files=external)


def _check_external_data(model: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """Validate every stored tensor and external-data reference before any byte is read."""
    files: dict[Path, int] = {}
    total = 0
    for tensor in iter_stored_tensors(model):
        info = external_info(tensor)
        if info is None:
            check_stored_size(tensor)
            continue
        location = info.get("location", "")
        target = _resolve_inside(base_dir, location, tensor.name)
        if not target.is_file():
            raise InputError(
                f"external data file '{location}' of tensor '{tensor.name}' is missing "
                "(or not a regular file)"
            )
        offset, length = _external_span(info, tensor)
        files[target] = max(files.get(target, 0), offset + length)
        total += length
    for target, end in files.items():
        if target.stat().st_size < end:
            raise InputError(f"external data file '{target.name}' is truncated")
    budget = memory_budget()
    if total > budget:
        raise InputError(
            f"the external data declares {human_bytes(total)}, more than the "
            f"{human_bytes(budget)} of memory available"
        )
    return sorted(files)


def _external_span(info: dict[str, str], tensor: onnx.TensorProto) -> tuple[int, int]:
    """(offset, length) of a tensor's external bytes; the length must match its shape."""
    numbers = {}
    for key in ("offset", "length"):
        text = info.get(key, "") or "0"
        if not (text.isascii() and text.isdigit()):
            raise InputError(
                f"external data {key} '{text}' of tensor '{tensor.name}' is not a byte count"
            )
        numbers[key] = int(text)
    if any(d < 0 for d in tensor.dims):
        raise InputError(f"tensor '{tensor.name}' has a negative dim: {list(tensor.dims)}")
    needed = tensor_bytes(tensor.data_type, tensor.dims)
    length = numbers["length"] if "length" in info else needed
    if needed is not None and length != needed:
        raise InputError(
            f"external data of tensor '{tensor.name}' is {length} bytes, but its shape "
            f"{list(tensor.dims)} needs {needed}"
        )
    return numbers["offset"], length or 0


def _resolve_inside(base_dir: Path, location: str, tensor_name: str) -> Path:
    if "\0" in location:
        raise InputError(f"external data location of tensor '{tensor_name}' contains a NUL byte")
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")):
        raise InputError(
            f"external data location '{location}' of tensor '{tensor_name}' must be a relative path"
        )
    resolved = (base_dir / location).resolve()
    if base_dir != resolved and base_dir not in resolved.parents:
        raise InputError(
            f"external data location '{location}' of tensor '{tensor_name}' "
            "escapes the model's folder"
        )
    if (base_dir / location).is_symlink():
        raise InputError(
            f"external data file '{location}' of tensor '{tensor_name}' is a symbolic link "
            "(onnx does not read those; copy the file instead)"
        )
    return resolved


def stored_bytes(model: onnx.ModelProto) -> int:
    """Bytes the model needs when serialized inline (tensor payloads dominate)."""
    return sum(_tensor_payload(t) for t in iter_stored_tensors(model)) + _structure_bytes(model)


def _tensor_payload(tensor: onnx.TensorProto) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    return tensor.ByteSize()


def _structure_bytes(model: onnx.ModelProto) -> int:
    return len(model.graph.node) * 64


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    protect: list[Path] | tuple[Path, ...] = (),
    external_data: bool | None = None,
) -> Path:
    """Write `model` to `path` atomically; never over any file in `protect`.

    `external_data=None` stores tensors in `<name>.data` beside the model only when the model
    would not fit in one protobuf message.
    """
    out = Path(path)
    target = check_output_path(out, protect)
    data_name = out.name + ".data"
    data_target = target.parent / data_name
    protected = {p.resolve() for p in protect}
    use_external = (
        stored_bytes(model) > PROTOBUF_SAFE_BYTES if external_data is None else external_data
    )
    if use_external and data_target.resolve() in protected:
        raise InputError(f"refusing to overwrite the input model's data file: {data_target}")

    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=target.parent) as staging:
        staged_model = Path(staging) / out.name
        if use_external:
            to_write = copy.deepcopy(model)
            onnx.save_model(
                to_write,
                str(staged_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(staged_model))
        staged_data = Path(staging) / data_name
        for staged in (staged_data, staged_model):
            if staged.exists():
                _fsync(staged)
        # A model and its data file are renamed together or not at all.
        with signals_deferred():
            if use_external and staged_data.exists():
                os.replace(staged_data, data_target)
            os.replace(staged_model, target)
    return target


def discard_model(path: Path) -> None:
    """Delete a model this process wrote, with the external-data files it references."""
    model = onnx.load_model(str(path), load_external_data=False)
    for location in {(external_info(t) or {}).get("location") for t in iter_stored_tensors(model)}:
        if location:
            _resolve_inside(path.parent.resolve(), location, "").unlink(missing_ok=True)
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them to the previous handlers.

    Python runs signal handlers in the main thread only; elsewhere the block is not protected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


def check_output_path(path: Path, protect: list[Path] | tuple[Path, ...] = ()) -> Path:
    """Resolve an output path; InputError if it is an input file or cannot be written."""
    target = path.resolve()
    if target in {p.resolve() for p in protect}:
        raise InputError(f"refusing to overwrite the input model: {path} (choose another path)")
    if not target.parent.is_dir():
        raise InputError(f"output directory does not exist: {target.parent}")
    if not os.access(target.parent, os.W_OK):
        raise InputError(f"output directory is not writable: {target.parent}")
    if target.is_dir():
        raise InputError(f"output path is a directory: {path}")
    return target


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle, contextlib.suppress(OSError):
        os.fsync(handle.fileno())


def serialize_for_runtime(model: onnx.ModelProto, workdir: Path) -> str | bytes:
    """Bytes for onnxruntime, or a path under `workdir` when the model is too large for bytes."""
    if stored_bytes(model) <= PROTOBUF_SAFE_BYTES:
        return model.SerializeToString()
    path = workdir / "model.onnx"
    save_model(model, path, external_data=True)
    return str(path)


def write_text_atomic(path: Path, text: str, protect: list[Path] | tuple[Path, ...] = ()) -> Path:
    """Write a text file (report, table) atomically, never over a protected file."""
    return write_bytes_atomic(path, text.encode("utf-8"), protect)


def write_bytes_atomic(
    path: Path, data: bytes, protect: list[Path] | tuple[Path, ...] = ()
) -> Path:
    """Write a file (report, table, picture) atomically, never over a protected file; its
    permissions follow the umask, as for any file the user creates (mkstemp's would be 0600)."""
    target = check_output_path(path, protect)
    staging = str(target.parent / f".{target.name}.{secrets.token_hex(6)}")
    handle = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target
