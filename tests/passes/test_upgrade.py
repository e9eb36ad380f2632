"""`upgrade`: the opset conversion the manager runs before a pass that needs a newer opset
(issue 20: zoo CNNs at opset 7-9 were refused by `quant`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnxopt.passes import upgrade as upgrade_module
from onnxopt.passes.upgrade import UpgradeOptions, UpgradePass

from onnxopt import api
from onnxopt.errors import PassRefused
from onnxopt.infra.pass_base import PassContext
from onnxopt.quantization.coverage import int8_coverage
from onnxopt.runtime.session import make_session
from tests.conftest import run_cli
from tests.zoo.old_opset import zoo_cnn


def _images(path, samples: int, seed: int):
    rng = np.random.default_rng(seed)
    np.savez(path, data=rng.standard_normal((samples, 3, 32, 32)).astype(np.float32))
    return path


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upgrade")
    return _images(folder / "calib.npz", 64, 0), _images(folder / "val.npz", 32, 1)


@pytest.mark.parametrize("opset", [7, 8, 9])
def test_quant_upgrades_a_zoo_cnn_and_fuses_int8(data, opset):
    calib, val = data
    model = zoo_cnn(opset)
    result = api.optimize(model, passes="quant", calib=calib, val=val)
    upgrade, cleanup, quant = result.report.passes
    assert (upgrade.name, upgrade.required_by, upgrade.status) == ("upgrade", "quant", "changed")
    assert upgrade.stats["opset_from"] == opset and upgrade.stats["opset_to"] == 10
    assert all(o["max_rel"] <= 1e-5 for o in upgrade.fidelity["outputs"])
    assert (cleanup.name, cleanup.required_by) == ("cleanup", "quant")
    assert cleanup.stats["bn_folded"] == 3  # the weights are constants once out of the inputs
    assert quant.status == "changed" and quant.stats["quantized_ops"]["Conv"] == 6
    assert result.model.ir_version >= 7 and [i.name for i in result.model.graph.input] == ["data"]
    coverage = int8_coverage(result.model)
    assert coverage.kernels.get("QLinearConv", 0) >= 6  # all but the float image stem
    assert coverage.fraction >= 0.8
    feed = {"data": np.load(val)["data"]}
    before = make_session(model).run(None, feed)[0]
    after = make_session(result.model).run(None, feed)[0]
    assert _cosine(before, after) >= 0.99


def test_upgrade_alone_keeps_outputs_and_names_what_it_adds():
    model = zoo_cnn(7)
    result = UpgradePass(UpgradeOptions(opset=13)).run(model, PassContext())
    converted = result.model
    assert result.changed and result.stats["opset_from"] == 7 and result.stats["opset_to"] == 13
    assert result.stats["op_types_changed"] == {"Constant": 3, "Resize": 1, "Upsample": -1}
    assert converted.ir_version == 7 and [i.name for i in converted.graph.input] == ["data"]
    names = [node.name for node in converted.graph.node]
    assert all(names) and len(set(names)) == len(names)
    onnx.checker.check_model(converted, full_check=True)
    feed = {"data": np.random.default_rng(2).standard_normal((4, 3, 32, 32)).astype(np.float32)}
    before = make_session(model).run(None, feed)[0]
    after = make_session(converted).run(None, feed)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


def test_model_already_new_enough_is_left_unchanged():
    model = zoo_cnn(9)
    result = UpgradePass(UpgradeOptions(opset=9)).run(model, PassContext())
    assert not result.changed and result.skipped == ["model already at opset 9"]


def _spatial_bn_model() -> onnx.ModelProto:
    """BatchNormalization with spatial=0 at opset 7: the converter has no form for it."""
    params = [numpy_helper.from_array(np.ones((2, 4, 4), np.float32), n) for n in "abcd"]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "a", "b", "c", "d"], ["y"], spatial=0)],
        "g",
        [helper.make_tensor_value_info("x", 1, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", 1, [1, 2, 4, 4])],
        params,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 4
    return model


def test_failed_conversion_is_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "bn.onnx"
    onnx.save(_spatial_bn_model(), path)
    calib = tmp_path / "c.npz"
    np.savez(calib, x=np.ones((4, 1, 2, 4, 4), np.float32)[:, 0])
    out = tmp_path / "o.onnx"
    result = run_cli("optimize", path, "--passes", "quant", "--calib", calib, "-o", out)
    assert result.returncode != 0 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith(
        "error: pass 'upgrade': onnx's version converter failed from opset 7 to 10: RuntimeError"
    )


def test_opset_older_than_the_converter_floor_is_refused_before_any_work():
    model = zoo_cnn(7)
    model.opset_import[0].version = 6
    with pytest.raises(
        PassRefused,
        match="needs opset >= 10, the model has opset 6 \\(onnxopt "
        "upgrades models from opset 7 on\\)",
    ):
        api.optimize(model, passes="quant{prepare=false}", calib="random")


def test_an_upgrade_that_changes_outputs_is_rolled_back(monkeypatch, data):
    real = upgrade_module.upgrade_opset

    def wrong(model, target):
        converted = real(model, target)
        for tensor in converted.graph.initializer:
            if tensor.name == "fc_b":
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 1, "fc_b"))
        return converted

    monkeypatch.setattr(upgrade_module, "upgrade_opset", wrong)
    with pytest.raises(PassRefused, match="pass 'quant' needs opset >= 10, the model has opset 9"):
        api.optimize(zoo_cnn(9), passes="quant", calib=data[0], val=data[1])


def test_share_codebooks_upgrade_an_opset_9_model_to_11(data):
    result = api.optimize(zoo_cnn(9), passes="share{bits=4}", calib=data[0], val=data[1])
    upgrade, share = result.report.passes
    assert (upgrade.name, upgrade.required_by, upgrade.stats["opset_to"]) == (
        "upgrade",
        "share",
        11,
    )
    assert (
        share.status == "changed" and share.stats["bytes_after"] < share.stats["bytes_before"] / 3
    )
    assert {"BitShift", "GatherElements"} <= {n.op_type for n in result.model.graph.node}


def test_weights_listed_as_inputs_from_ir_4_on_stay_inputs_and_say_so(data):
    """From IR 4 on an initializer that is also a graph input is a default a caller may
    override: not folded, not quantized, and the report says which input it is."""
    model = zoo_cnn(9)
    weights = [(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer]
    model.graph.input.extend([helper.make_tensor_value_info(*w) for w in weights])
    result = api.optimize(model, passes="quant", calib=data[0], val=data[1])
    upgrade, cleanup, quant = result.report.passes
    assert upgrade.status == "changed" and len(result.model.graph.input) == 1 + len(weights)
    assert cleanup.stats["bn_folded"] == 0
    assert any("parameters are graph inputs ('bn1_s'" in s for s in cleanup.skipped)
    assert quant.status == "unchanged"
    assert "Conv 'res2a' stays float: weight 'res2a_w' is also a graph input" in " ".join(
        quant.skipped
    )
