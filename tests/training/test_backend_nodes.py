"""The onnx backend node tests (onnx 1.22.0's `backend/test/data/node`) through the handlers.

Every test folder whose model is one node of an op in `HANDLERS` is run: the node's inputs
come from `test_data_set_0/input_*.pb`, go through `handler_for` and the handler in torch, and
the outputs are compared with `output_*.pb`: floats within 1e-5 relative and 1e-6 absolute
(onnx's own runner allows 1e-3 and 1e-7), integers and booleans exactly. Quantized integers are
carried as float32, as the graph module carries them (`ops_quant.CARRIED_INPUTS`).

Three explicit lists keep the outcome honest in both directions:
- DECLINED: folders that must be refused (Unsupported from `handler_for`, the handler, or the
  runner for element types torch has no exact counterpart of), with the reason's key words;
  a newly declined folder and a listed folder that now runs both fail.
- FOLLOWS_ONNXRUNTIME: folders whose expected outputs (the ONNX reference) differ from ONNX
  Runtime; the handlers follow ONNX Runtime, which runs the deployed model, and the test
  checks that against ONNX Runtime itself.
- LOOSE: folders whose expected outputs are stored rounded, with the tolerance they need.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from onnxopt.training.handlers import HANDLERS, handler_for
from onnxopt.training.nodes import TORCH_DTYPES, NodeView, Unsupported
from onnxopt.training.ops_quant import CARRIED_INPUTS, CARRIED_OUTPUTS, RANGES
from tests.corpus.fetch import corpus_dir

RTOL, ATOL = 1e-5, 1e-6
RUNNABLE = set(TORCH_DTYPES) | {TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64}
"""Element types the runner can hand to a handler (torch holds uint16/32/64, without math)."""

LOOSE = {
    "test_averagepool_2d_ceil_last_window_starts_on_pad": 5e-4,  # stored to 4 decimals
}

FOLLOWS_ONNXRUNTIME = {
    # align_corners with scales: the reference divides by the unrounded length (scale * in)
    # - 1, ONNX Runtime by the output size - 1
    "test_resize_downsample_scales_cubic_align_corners": "align_corners",
    "test_resize_downsample_scales_linear_align_corners": "align_corners",
}

_DECLINED = {  # the reason's key words -> the folders, whitespace-separated
    # PyTorch's pooling indices follow another layout
    "Indices output": """
        test_maxpool_with_argmax_2d_precomputed_pads
        test_maxpool_with_argmax_2d_precomputed_strides
    """,
    # a scale-dependent filter, not yet reproduced
    "antialias=1": """
        test_resize_downsample_scales_cubic_antialias
        test_resize_downsample_scales_linear_antialias
        test_resize_downsample_sizes_cubic_antialias
        test_resize_downsample_sizes_linear_antialias
    """,
    # Cast to float8e8m0 (opset 25): rounding modes of a type torch lacks
    "attribute 'round_mode'": """
        test_cast_e8m0_FLOAT16_to_FLOAT8E8M0 test_cast_e8m0_FLOAT_to_FLOAT8E8M0
    """,
    # blocked quantization (opset 21)
    "block_size": """
        test_dequantizelinear_blocked test_quantizelinear_blocked_asymmetric
        test_quantizelinear_blocked_symmetric
    """,
    # optional and sequence values
    "is not a tensor": """
        test_identity_opt test_identity_sequence
    """,
    # batch statistics, random masks: training-only behaviour
    "training mode": """
        test_batchnorm_epsilon_training_mode test_batchnorm_example_training_mode
        test_training_dropout test_training_dropout_default
        test_training_dropout_default_mask test_training_dropout_mask
        test_training_dropout_zero_ratio test_training_dropout_zero_ratio_mask
    """,
    # torch has no arithmetic, comparison or shift on uint64
    "uint64": """
        test_add_uint64 test_bitshift_left_uint64 test_bitshift_right_uint64
        test_bitwise_and_ui64_bcast_3v1d test_bitwise_or_ui64_bcast_3v1d
        test_bitwise_xor_ui64_bcast_3v1d test_div_uint64 test_equal_uint64
        test_greater_equal_uint64 test_greater_uint64 test_less_equal_uint64
        test_less_uint64 test_max_uint64 test_min_uint64 test_mod_uint64 test_mul_uint64
        test_sub_uint64
    """,
    # float8, float4, 2/4-bit and string tensors: no torch counterpart
    "element type FLOAT4E2M1": """
        test_cast_FLOAT16_to_FLOAT4E2M1 test_cast_FLOAT4E2M1_to_FLOAT
        test_cast_FLOAT4E2M1_to_FLOAT16 test_cast_FLOAT_to_FLOAT4E2M1
        test_castlike_FLOAT16_to_FLOAT4E2M1 test_castlike_FLOAT16_to_FLOAT4E2M1_expanded
        test_castlike_FLOAT4E2M1_to_FLOAT test_castlike_FLOAT4E2M1_to_FLOAT16
        test_castlike_FLOAT4E2M1_to_FLOAT16_expanded
        test_castlike_FLOAT4E2M1_to_FLOAT_expanded test_castlike_FLOAT_to_FLOAT4E2M1
        test_castlike_FLOAT_to_FLOAT4E2M1_expanded test_dequantizelinear_float4e2m1
        test_quantizelinear_float4e2m1
    """,
    "element type FLOAT8E4M3FN": """
        test_cast_FLOAT16_to_FLOAT8E4M3FN test_cast_FLOAT8E4M3FN_to_FLOAT
        test_cast_FLOAT8E4M3FN_to_FLOAT16 test_cast_FLOAT_to_FLOAT8E4M3FN
        test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FN
        test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FN
        test_castlike_FLOAT16_to_FLOAT8E4M3FN
        test_castlike_FLOAT16_to_FLOAT8E4M3FN_expanded
        test_castlike_FLOAT8E4M3FN_to_FLOAT test_castlike_FLOAT8E4M3FN_to_FLOAT16
        test_castlike_FLOAT8E4M3FN_to_FLOAT16_expanded
        test_castlike_FLOAT8E4M3FN_to_FLOAT_expanded test_castlike_FLOAT_to_FLOAT8E4M3FN
        test_castlike_FLOAT_to_FLOAT8E4M3FN_expanded
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FN
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FN_expanded
        test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FN
        test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FN_expanded
        test_dequantizelinear_e4m3fn test_dequantizelinear_e4m3fn_float16
        test_dequantizelinear_e4m3fn_zero_point test_quantizelinear_e4m3fn
    """,
    "element type FLOAT8E4M3FNUZ": """
        test_cast_FLOAT16_to_FLOAT8E4M3FNUZ test_cast_FLOAT8E4M3FNUZ_to_FLOAT
        test_cast_FLOAT8E4M3FNUZ_to_FLOAT16 test_cast_FLOAT_to_FLOAT8E4M3FNUZ
        test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ
        test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ
        test_castlike_FLOAT16_to_FLOAT8E4M3FNUZ
        test_castlike_FLOAT16_to_FLOAT8E4M3FNUZ_expanded
        test_castlike_FLOAT8E4M3FNUZ_to_FLOAT test_castlike_FLOAT8E4M3FNUZ_to_FLOAT16
        test_castlike_FLOAT8E4M3FNUZ_to_FLOAT16_expanded
        test_castlike_FLOAT8E4M3FNUZ_to_FLOAT_expanded
        test_castlike_FLOAT_to_FLOAT8E4M3FNUZ
        test_castlike_FLOAT_to_FLOAT8E4M3FNUZ_expanded
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ_expanded
        test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ
        test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ_expanded
    """,
    "element type FLOAT8E5M2": """
        test_cast_FLOAT16_to_FLOAT8E5M2 test_cast_FLOAT8E5M2_to_FLOAT
        test_cast_FLOAT8E5M2_to_FLOAT16 test_cast_FLOAT_to_FLOAT8E5M2
        test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2
        test_cast_no_saturate_FLOAT_to_FLOAT8E5M2 test_castlike_FLOAT16_to_FLOAT8E5M2
        test_castlike_FLOAT16_to_FLOAT8E5M2_expanded test_castlike_FLOAT8E5M2_to_FLOAT
        test_castlike_FLOAT8E5M2_to_FLOAT16 test_castlike_FLOAT8E5M2_to_FLOAT16_expanded
        test_castlike_FLOAT8E5M2_to_FLOAT_expanded test_castlike_FLOAT_to_FLOAT8E5M2
        test_castlike_FLOAT_to_FLOAT8E5M2_expanded
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2_expanded
        test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2
        test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2_expanded
        test_dequantizelinear_e5m2 test_quantizelinear_e5m2
    """,
    "element type FLOAT8E5M2FNUZ": """
        test_cast_FLOAT16_to_FLOAT8E5M2FNUZ test_cast_FLOAT8E5M2FNUZ_to_FLOAT
        test_cast_FLOAT8E5M2FNUZ_to_FLOAT16 test_cast_FLOAT_to_FLOAT8E5M2FNUZ
        test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ
        test_cast_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ
        test_castlike_FLOAT16_to_FLOAT8E5M2FNUZ
        test_castlike_FLOAT16_to_FLOAT8E5M2FNUZ_expanded
        test_castlike_FLOAT8E5M2FNUZ_to_FLOAT test_castlike_FLOAT8E5M2FNUZ_to_FLOAT16
        test_castlike_FLOAT8E5M2FNUZ_to_FLOAT16_expanded
        test_castlike_FLOAT8E5M2FNUZ_to_FLOAT_expanded
        test_castlike_FLOAT_to_FLOAT8E5M2FNUZ
        test_castlike_FLOAT_to_FLOAT8E5M2FNUZ_expanded
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ
        test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ_expanded
        test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ
        test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ_expanded
    """,
    "element type FLOAT8E8M0": """
        test_cast_e8m0_FLOAT8E8M0_to_FLOAT test_cast_e8m0_FLOAT8E8M0_to_FLOAT16
    """,
    "element type INT2": """
        test_cast_FLOAT16_to_INT2 test_cast_FLOAT_to_INT2 test_cast_INT2_to_FLOAT
        test_cast_INT2_to_FLOAT16 test_cast_INT2_to_INT8 test_castlike_FLOAT16_to_INT2
        test_castlike_FLOAT16_to_INT2_expanded test_castlike_FLOAT_to_INT2
        test_castlike_FLOAT_to_INT2_expanded test_castlike_INT2_to_FLOAT
        test_castlike_INT2_to_FLOAT16 test_castlike_INT2_to_FLOAT16_expanded
        test_castlike_INT2_to_FLOAT_expanded test_castlike_INT2_to_INT8
        test_castlike_INT2_to_INT8_expanded
    """,
    "element type INT4": """
        test_cast_FLOAT16_to_INT4 test_cast_FLOAT_to_INT4 test_cast_INT4_to_FLOAT
        test_cast_INT4_to_FLOAT16 test_cast_INT4_to_INT8 test_castlike_FLOAT16_to_INT4
        test_castlike_FLOAT16_to_INT4_expanded test_castlike_FLOAT_to_INT4
        test_castlike_FLOAT_to_INT4_expanded test_castlike_INT4_to_FLOAT
        test_castlike_INT4_to_FLOAT16 test_castlike_INT4_to_FLOAT16_expanded
        test_castlike_INT4_to_FLOAT_expanded test_castlike_INT4_to_INT8
        test_castlike_INT4_to_INT8_expanded
    """,
    "element type STRING": """
        test_equal_string test_equal_string_broadcast
    """,
    "element type UINT2": """
        test_cast_FLOAT16_to_UINT2 test_cast_FLOAT_to_UINT2 test_cast_UINT2_to_FLOAT
        test_cast_UINT2_to_FLOAT16 test_cast_UINT2_to_UINT8
        test_castlike_FLOAT16_to_UINT2 test_castlike_FLOAT16_to_UINT2_expanded
        test_castlike_FLOAT_to_UINT2 test_castlike_FLOAT_to_UINT2_expanded
        test_castlike_UINT2_to_FLOAT test_castlike_UINT2_to_FLOAT16
        test_castlike_UINT2_to_FLOAT16_expanded test_castlike_UINT2_to_FLOAT_expanded
        test_castlike_UINT2_to_UINT8 test_castlike_UINT2_to_UINT8_expanded
    """,
    "element type UINT4": """
        test_cast_FLOAT16_to_UINT4 test_cast_FLOAT_to_UINT4 test_cast_UINT4_to_FLOAT
        test_cast_UINT4_to_FLOAT16 test_cast_UINT4_to_UINT8
        test_castlike_FLOAT16_to_UINT4 test_castlike_FLOAT16_to_UINT4_expanded
        test_castlike_FLOAT_to_UINT4 test_castlike_FLOAT_to_UINT4_expanded
        test_castlike_UINT4_to_FLOAT test_castlike_UINT4_to_FLOAT16
        test_castlike_UINT4_to_FLOAT16_expanded test_castlike_UINT4_to_FLOAT_expanded
        test_castlike_UINT4_to_UINT8 test_castlike_UINT4_to_UINT8_expanded
    """,
}
DECLINED = {words: folders.split() for words, folders in _DECLINED.items()}


@dataclass
class Outcome:
    passed: list[str] = field(default_factory=list)
    declined: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    divergent: dict[str, list[np.ndarray]] = field(default_factory=dict)
    ops_seen: set[str] = field(default_factory=set)


def _read(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def _type_name(code: int) -> str:
    return TensorProto.DataType.Name(code)


def _tensor(array: np.ndarray, code: int, carried: bool) -> torch.Tensor:
    if carried and code in RANGES:  # 4-bit and 2-bit integers too: carried as float32
        return torch.from_numpy(array.astype(np.float32))
    if code not in RUNNABLE:
        raise Unsupported(f"element type {_type_name(code)} has no exact torch counterpart")
    if code == TensorProto.BFLOAT16:
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    tensor = torch.from_numpy(np.array(array))
    return tensor.to(torch.float32) if carried else tensor


def _inputs(model: onnx.ModelProto, folder: Path) -> tuple[list, list[int]]:
    """The node's inputs (None where omitted) and their ONNX element types."""
    node, graph = model.graph.node[0], model.graph
    arrays, types = {}, {}
    for i, info in enumerate(graph.input):
        if not info.type.HasField("tensor_type"):
            raise Unsupported(f"input '{info.name}' is not a tensor")
        arrays[info.name] = _read(folder / "test_data_set_0" / f"input_{i}.pb")
        types[info.name] = info.type.tensor_type.elem_type
    for tensor in graph.initializer:
        arrays[tensor.name], types[tensor.name] = numpy_helper.to_array(tensor), tensor.data_type
    carried = CARRIED_INPUTS.get(node.op_type, ())
    values = [
        _tensor(arrays[name], types[name], i in carried) if name else None
        for i, name in enumerate(node.input)
    ]
    return values, [types.get(name, 0) for name in node.input]


def _numpy(op: str, index: int, got: torch.Tensor, want: np.ndarray) -> tuple:
    """(got, want) as comparable numpy arrays: carried integers back in their type,
    bfloat16 as float32."""
    got = got.detach().cpu()
    if got.dtype == torch.bfloat16:
        return got.float().numpy(), want.astype(np.float32)
    if index in CARRIED_OUTPUTS.get(op, ()) and want.dtype.kind not in "fc":
        return got.numpy().astype(np.int64), want.astype(np.int64)
    return got.numpy(), want


def _mismatch(op: str, got: list, wants: list[np.ndarray], rtol: float) -> str | None:
    if len(got) < len(wants):
        return f"{len(got)} outputs, expected {len(wants)}"
    for index, expected in enumerate(wants):
        value, expected = _numpy(op, index, got[index], expected)
        if value.shape != expected.shape or value.dtype != expected.dtype:
            return f"output {index}: {value.dtype}{value.shape} != {expected.dtype}{expected.shape}"
        try:
            if expected.dtype.kind == "f":
                np.testing.assert_allclose(value, expected, rtol=rtol, atol=ATOL)
            else:
                np.testing.assert_array_equal(value, expected)
        except AssertionError as error:
            return f"output {index}: {str(error).strip().splitlines()[-1]}"
    return None


def _single_node(folder: Path) -> onnx.ModelProto | None:
    model = onnx.load(folder / "model.onnx")
    graph = model.graph
    if len(graph.node) != 1 or graph.node[0].op_type not in HANDLERS:
        return None
    return model


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _run_folder(model: onnx.ModelProto, folder: Path) -> tuple[list, list[np.ndarray]]:
    inputs, types = _inputs(model, folder)
    view = NodeView.of(model.graph.node[0], _opset(model), input_types=types)
    got = handler_for(view)(view, inputs)
    wants = [
        _read(folder / "test_data_set_0" / f"output_{i}.pb") for i in range(len(model.graph.output))
    ]
    return got, wants


@functools.cache
def outcome() -> Outcome:
    """Every single-node folder of a handled op: passed, declined, failed or divergent."""
    result = Outcome()
    for folder in sorted((corpus_dir() / "node").iterdir()):
        model = _single_node(folder)
        if model is None:
            continue
        op = model.graph.node[0].op_type
        result.ops_seen.add(op)
        try:
            got, wants = _run_folder(model, folder)
        except Unsupported as reason:
            result.declined[folder.name] = str(reason)
            continue
        if folder.name in FOLLOWS_ONNXRUNTIME:
            result.divergent[folder.name] = got
            continue
        problem = _mismatch(op, got, wants, LOOSE.get(folder.name, RTOL))
        if problem:
            result.failed[folder.name] = problem
        else:
            result.passed.append(folder.name)
    return result


def test_every_accepted_node_test_gives_its_expected_outputs() -> None:
    result = outcome()
    assert not result.failed, "\n".join(f"{k}: {v}" for k, v in sorted(result.failed.items()))
    assert len(result.passed) >= 700


def test_declined_node_tests_are_exactly_the_listed_ones() -> None:
    listed = {folder: words for words, folders in DECLINED.items() for folder in folders}
    declined = outcome().declined
    assert sorted(set(declined) - set(listed)) == [], "newly declined"
    assert sorted(set(listed) - set(declined)) == [], "listed as declined but now runs"
    wrong = {f: declined[f] for f, words in listed.items() if words not in declined[f]}
    assert not wrong, wrong


@pytest.mark.parametrize("name", sorted(FOLLOWS_ONNXRUNTIME))
def test_where_the_reference_and_onnxruntime_differ_handlers_follow_onnxruntime(name: str):
    folder = corpus_dir() / "node" / name
    model = onnx.load(folder / "model.onnx")
    feeds = {
        info.name: _read(folder / "test_data_set_0" / f"input_{i}.pb")
        for i, info in enumerate(model.graph.input)
    }
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    got = outcome().divergent[name]
    op = model.graph.node[0].op_type
    assert _mismatch(op, got, expected, RTOL) is None
    reference = [_read(folder / "test_data_set_0" / "output_0.pb")]
    assert _mismatch(op, got, reference, RTOL) is not None, "the reference agrees now: unlist"


NO_NODE_TEST = {"GlobalLpPool": "onnx ships no node test of it (ONNX Runtime parity covers it)"}


def test_every_op_in_the_table_has_node_tests() -> None:
    missing = set(HANDLERS) - outcome().ops_seen
    assert missing == set(NO_NODE_TEST), sorted(missing)
