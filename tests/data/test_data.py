"""Data readers: each source, batching, streaming, and every mismatch as one clear line."""

from __future__ import annotations

import logging
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxopt.data.sources import (
    DirectorySource,
    ImageFolderSource,
    ImagePreprocess,
    IterableSource,
    NpzSource,
    RandomSource,
    check_feed,
    input_specs,
    open_data,
    parse_preprocess,
    parse_shapes,
)
from onnxopt.errors import InputError
from onnxopt.runtime import probe as probe_module
from onnxopt.runtime.probe import stream_tensors


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    model.ir_version = 10
    return model


HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'
DYNAMIC = parse(HEADER + "g (float[N, 3] x) => (float[N, 3] y) { y = Relu(x) }")
STATIC2 = parse(HEADER + "g (float[2, 3] x) => (float[2, 3] y) { y = Relu(x) }")
TWO_INPUTS = parse(
    HEADER + "g (float[batch, 3] a, int64[batch, 4] b) => (float[batch, 3] y) { y = Relu(a) }"
)
IMAGE = parse(HEADER + "g (float[N, 3, 4, 6] x) => (float[N, 3, 4, 6] y) { y = Relu(x) }")
IMAGE_NHWC = parse(HEADER + "g (float[1, 4, 6, 3] x) => (float[1, 4, 6, 3] y) { y = Relu(x) }")
IMAGE_U8 = parse(HEADER + "g (uint8[N, 3, 4, 6] x) => (uint8[N, 3, 4, 6] y) { y = Identity(x) }")


def rows(n: int, width: int = 3) -> np.ndarray:
    return np.arange(n * width, dtype=np.float32).reshape(n, width)


def batches(source) -> list[np.ndarray]:
    return [feed["x"] for feed in source]


# --- .npz / .npy --------------------------------------------------------------------------


def test_npz_dynamic_batch_is_sliced_in_order(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=rows(7), unused=np.zeros(3))
    source = open_data(path, DYNAMIC, batch_size=3)
    assert isinstance(source, NpzSource) and source.samples == 7 and source.ignored == ["unused"]
    got = batches(source)
    assert [b.shape[0] for b in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(got), rows(7))
    assert [b.shape for b in batches(source)] == [b.shape for b in got]  # re-iterable


def test_npz_static_batch_drops_remainder_with_warning(tmp_path, caplog):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=rows(5))
    with caplog.at_level(logging.WARNING):
        got = batches(open_data(path, STATIC2))
    assert [b.shape for b in got] == [(2, 3), (2, 3)]
    np.testing.assert_array_equal(got[1], rows(5)[2:4])
    assert "dropping the last 1 samples" in caplog.text


def test_npz_static_batch_rejects_other_batch_size(tmp_path):
    np.savez(tmp_path / "d.npz", x=rows(4))
    with pytest.raises(InputError, match="static batch of 2; cannot use 3"):
        open_data(tmp_path / "d.npz", STATIC2, batch_size=3)


def test_npy_file_for_single_input(tmp_path):
    np.save(tmp_path / "x.npy", rows(4))
    got = batches(open_data(tmp_path / "x.npy", DYNAMIC, batch_size=4))
    np.testing.assert_array_equal(got[0], rows(4))


VAD_LIKE = parse(
    HEADER + "g (float[N, S] x, float[2, N, 128] state, int64 sr) => (float[2, N, 128] out) "
    "{ s = Cast<to=1>(sr) \n sx = ReduceSum<keepdims=0>(x) \n t = Add(s, sx) \n "
    "out = Add(state, t) }"
)


def test_npz_of_one_sample_with_a_scalar_input_is_one_feed(tmp_path):
    sample = {
        "x": rows(1, width=512),
        "state": np.arange(256, dtype=np.float32).reshape(2, 1, 128),
        "sr": np.array(16000, dtype=np.int64),
    }
    np.savez(tmp_path / "one.npz", **sample)
    source = open_data(tmp_path / "one.npz", VAD_LIKE)
    assert source.description == "one.npz (one sample)"
    feeds = list(source)
    assert len(feeds) == 1 and feeds[0].keys() == sample.keys()
    for name, array in sample.items():
        assert feeds[0][name].dtype == array.dtype
        np.testing.assert_array_equal(feeds[0][name], array)
    assert len(list(source)) == 1  # re-iterable


def test_npz_of_one_sample_with_different_leading_dims_is_one_feed(tmp_path):
    model = parse(
        HEADER + "g (float[2, 5] a, float[5, 3] b) => (float[2, 3] y) { y = MatMul(a, b) }"
    )
    a, b = rows(2, width=5), rows(5, width=3)
    np.savez(tmp_path / "one.npz", a=a, b=b)
    feeds = list(open_data(tmp_path / "one.npz", model))
    assert len(feeds) == 1
    np.testing.assert_array_equal(feeds[0]["a"], a)
    np.testing.assert_array_equal(feeds[0]["b"], b)


def test_npz_fitting_neither_reading_names_the_expected_shapes(tmp_path):
    np.savez(
        tmp_path / "bad.npz",
        x=rows(1, width=512),
        state=np.zeros((2, 1, 64), np.float32),
        sr=np.array(16000, dtype=np.int64),
    )
    with pytest.raises(InputError) as info:
        open_data(tmp_path / "bad.npz", VAD_LIKE)
    message = str(info.value)
    assert "\n" not in message
    assert "'sr' is a scalar" in message
    assert "x float32[N,S], state float32[2,N,128], sr int64[]" in message


def test_stackable_npz_is_still_read_as_stacked_samples(tmp_path):
    np.savez(tmp_path / "s.npz", x=rows(11))
    source = open_data(tmp_path / "s.npz", DYNAMIC)
    assert source.samples == 11 and [len(f["x"]) for f in source] == [8, 3]


def test_fortran_ordered_npz_is_read_correctly(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(rows(5)))
    np.testing.assert_array_equal(
        np.concatenate(batches(open_data(tmp_path / "f.npz", DYNAMIC))), rows(5)
    )


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": rows(2)}, "missing input 'x' (file has: y)"),
        (
            {"x": np.float32(1.0)},
            "'x' is a scalar, so samples cannot be stacked on axis 0, "
            "and the arrays are not one sample either (the model expects x float32[N,3])",
        ),
        ({"x": rows(0)}, "holds no samples"),
    ],
)
def test_npz_content_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(InputError) as info:
        open_data(tmp_path / "d.npz", DYNAMIC)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_npz_dtype_and_shape_mismatch_name_the_input(tmp_path):
    np.savez(tmp_path / "dtype.npz", x=rows(2).astype(np.float64))
    with pytest.raises(InputError, match=r"input 'x' expects float32\[N,3\], got float64"):
        list(open_data(tmp_path / "dtype.npz", DYNAMIC))
    np.savez(tmp_path / "shape.npz", x=rows(2, width=4))
    with pytest.raises(InputError, match=r"input 'x' expects float32\[N,3\], got shape \[2, 4\]"):
        list(open_data(tmp_path / "shape.npz", DYNAMIC))


def test_npz_inputs_with_different_sample_counts(tmp_path):
    np.savez(tmp_path / "d.npz", a=rows(3), b=np.zeros((4, 4), np.int64))
    with pytest.raises(InputError, match=r"different sample counts \[3, 4\]"):
        open_data(tmp_path / "d.npz", TWO_INPUTS)


def test_npy_needs_a_single_input_model(tmp_path):
    np.save(tmp_path / "a.npy", rows(2))
    with pytest.raises(InputError, match=r"model has 2 inputs \(a, b\); use .npz"):
        open_data(tmp_path / "a.npy", TWO_INPUTS)


def test_npz_is_streamed_not_loaded_whole(tmp_path):
    path = tmp_path / "big.npz"
    samples = rows(4096, width=512)  # 8 MiB
    np.savez(path, x=samples)
    model = parse(HEADER + "g (float[N, 512] x) => (float[N, 512] y) { y = Relu(x) }")
    source = open_data(path, model, batch_size=16)
    tracemalloc.start()
    total = 0.0
    for feed in source:
        total += float(feed["x"][:, 0].sum())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == float(samples[:, 0].sum())
    assert peak < samples.nbytes / 16


# --- directories --------------------------------------------------------------------------


def test_directory_of_npz_samples_with_and_without_batch_axis(tmp_path):
    np.savez(tmp_path / "0.npz", x=rows(1)[0])  # no batch axis
    np.savez(tmp_path / "1.npz", x=rows(2)[1:])  # with batch axis
    np.save(tmp_path / "2.npy", rows(3)[2])
    source = open_data(tmp_path, DYNAMIC, batch_size=2)
    assert isinstance(source, DirectorySource)
    got = batches(source)
    assert [b.shape[0] for b in got] == [2, 1]
    np.testing.assert_array_equal(np.concatenate(got), rows(3))


def test_directory_static_batch_stacks_samples(tmp_path):
    for i in range(5):
        np.savez(tmp_path / f"{i:02d}.npz", x=rows(5)[i])
    got = batches(open_data(tmp_path, STATIC2))
    assert len(got) == 2
    np.testing.assert_array_equal(np.concatenate(got), rows(5)[:4])


def test_directory_file_missing_an_input(tmp_path):
    np.savez(tmp_path / "s.npz", a=rows(1))
    with pytest.raises(InputError, match=r"s.npz: missing input 'b' \(file has: a\)"):
        list(open_data(tmp_path, TWO_INPUTS))


def test_directory_file_with_wrong_shape(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.zeros((1, 5), np.float32))
    with pytest.raises(InputError, match=r"s.npz: input 'x' expects float32\[\?,3\]"):
        list(open_data(tmp_path, DYNAMIC))


def test_directory_file_holding_a_whole_feed_without_a_sample_axis(tmp_path):
    # Inputs that share no first dim (a scalar, a vector): each file is one feed as it is.
    model = parse(
        HEADER + "g (float[4, 3] x, float[3] w, int64 k) => (float[4, 3] y) { y = Mul(x, w) }"
    )
    for i in range(2):
        np.savez(tmp_path / f"{i}.npz", x=rows(4) + i, w=np.ones(3, np.float32), k=np.int64(i))
    got = list(open_data(tmp_path, model))
    assert [sorted(f) for f in got] == [["k", "w", "x"]] * 2
    np.testing.assert_array_equal(got[1]["x"], rows(4) + 1)
    assert got[1]["k"].shape == () and int(got[1]["k"]) == 1


def test_directory_inputs_without_a_common_sample_axis_that_do_not_fit(tmp_path):
    np.savez(tmp_path / "s.npz", a=rows(2), b=np.zeros((3, 4), np.int64))
    with pytest.raises(InputError, match="inputs hold different numbers of samples"):
        list(open_data(tmp_path, TWO_INPUTS))


def test_sequence_and_untyped_inputs_are_refused_in_one_line():
    sequence = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("SequenceLength", ["s"], ["n"])],
            "g",
            [onnx.helper.make_tensor_sequence_value_info("s", onnx.TensorProto.FLOAT, None)],
            [onnx.helper.make_tensor_value_info("n", onnx.TensorProto.INT64, [])],
        )
    )
    with pytest.raises(InputError, match=r"^input 's' is a sequence, not a tensor"):
        input_specs(sequence)
    sequence.graph.input[0].type.CopyFrom(onnx.helper.make_tensor_type_proto(0, [1]))
    with pytest.raises(InputError, match=r"^input 's' has no usable element type \(0\)"):
        input_specs(sequence)


def test_directory_errors(tmp_path):
    with pytest.raises(InputError, match="no data files"):
        open_data(tmp_path, DYNAMIC)
    np.save(tmp_path / "a.npy", rows(1))
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(InputError, match="both array files and images"):
        open_data(tmp_path, DYNAMIC)
    with pytest.raises(InputError, match="data not found"):
        open_data(tmp_path / "nope.npz", DYNAMIC)
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(InputError, match="unsupported data file"):
        open_data(tmp_path / "data.csv", DYNAMIC)


# --- images -------------------------------------------------------------------------------


def _save_image(path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8)).save(path)


def test_image_folder_imagenet_normalization(tmp_path):
    color = np.array([255, 0, 128], np.uint8)
    _save_image(tmp_path / "a.png", np.broadcast_to(color, (8, 12, 3)))
    source = open_data(tmp_path, IMAGE, preprocess=ImagePreprocess(resize=4))
    assert isinstance(source, ImageFolderSource) and source.crop == (4, 6)
    (batch,) = batches(source)
    assert batch.shape == (1, 3, 4, 6) and batch.dtype == np.float32
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((color / 255.0 - mean) / std).astype(np.float32)
    np.testing.assert_allclose(batch[0, :, 0, 0], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        batch[0], np.broadcast_to(expected[:, None, None], (3, 4, 6)), atol=1e-6
    )


def test_image_center_crop_without_resize(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (10, 16, 3))
    _save_image(tmp_path / "a.png", pixels)
    options = parse_preprocess("resize=0,scale=1,mean=0/0/0,std=1/1/1")
    (batch,) = batches(open_data(tmp_path, IMAGE, preprocess=options))
    np.testing.assert_array_equal(batch[0].transpose(1, 2, 0), pixels[3:7, 5:11].astype(np.float32))


def _declaring(model: onnx.ModelProto, text: str) -> onnx.ModelProto:
    declared = onnx.ModelProto()
    declared.CopyFrom(model)
    entry = declared.metadata_props.add()
    entry.key, entry.value = "onnxopt.preprocess", text
    return declared


def test_image_folder_follows_the_models_declared_preprocessing_unless_told(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (4, 6, 3))
    _save_image(tmp_path / "a.png", pixels)
    model = _declaring(IMAGE, "resize=0,scale=1,mean=0/0/0,std=1/1/1")
    (batch,) = batches(open_data(tmp_path, model))
    np.testing.assert_array_equal(batch[0].transpose(1, 2, 0), pixels.astype(np.float32))
    told = parse_preprocess("resize=0,scale=2,mean=0/0/0,std=1/1/1")
    (batch,) = batches(open_data(tmp_path, model, preprocess=told))
    np.testing.assert_array_equal(batch[0].transpose(1, 2, 0), 2 * pixels.astype(np.float32))
    (batch,) = batches(open_data(tmp_path, IMAGE))  # nothing declared: ImageNet's
    assert batch.min() < 0
    with pytest.raises(InputError, match=r"metadata 'onnxopt\.preprocess'.*bogus"):
        open_data(tmp_path, _declaring(IMAGE, "bogus=1"))


def test_bundled_digits_images_give_the_bundled_calibration_samples():
    folder = Path(__file__).resolve().parents[2] / "examples"
    model = onnx.load(folder / "digits_cnn.onnx")
    images = np.concatenate([f["input"] for f in open_data(folder / "digits_images", model)])
    expected = np.load(folder / "digits_calib.npz")["input"]
    assert images.shape == expected.shape
    np.testing.assert_allclose(images, expected, rtol=0, atol=0.5 / 255 + 1e-7)


def test_image_layout_order_and_integer_inputs(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (4, 6, 3))
    _save_image(tmp_path / "a.png", pixels)
    nhwc = open_data(tmp_path, IMAGE_NHWC, preprocess=parse_preprocess("resize=0,order=BGR"))
    assert nhwc.layout == "NHWC"
    (batch,) = batches(nhwc)
    expected = (pixels[:, :, ::-1] / 255.0 - np.array([0.485, 0.456, 0.406])[::-1]) / np.array(
        [0.229, 0.224, 0.225]
    )[::-1]
    np.testing.assert_allclose(batch[0], expected, atol=1e-5)
    (raw,) = batches(open_data(tmp_path, IMAGE_U8, preprocess=parse_preprocess("resize=0")))
    np.testing.assert_array_equal(raw[0], pixels.transpose(2, 0, 1))


def test_image_folder_batches_and_resize(tmp_path):
    for i in range(3):
        _save_image(tmp_path / f"{i}.jpg", np.full((20, 30, 3), 40 * i))
    source = open_data(tmp_path, IMAGE, batch_size=2)
    assert source.resize == round(6 / 0.875)
    assert [b.shape for b in batches(source)] == [(2, 3, 4, 6), (1, 3, 4, 6)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("size=3", "bad preprocess option 'size=3' (valid keys: resize, crop"),
        ("layout=CHW", "bad value for preprocess option layout: 'CHW'"),
        ("std=0/1/1", "bad value for preprocess option std"),
        ("crop=axb", "bad value for preprocess option crop"),
    ],
)
def test_preprocess_parse_errors(text, message):
    with pytest.raises(InputError) as info:
        parse_preprocess(text)
    assert message in str(info.value)


def test_image_errors(tmp_path):
    _save_image(tmp_path / "a.png", np.zeros((3, 3, 3)))
    with pytest.raises(InputError, match="smaller than the crop 6x4"):
        list(open_data(tmp_path, IMAGE, preprocess=parse_preprocess("resize=0")))
    with pytest.raises(InputError, match="preprocess mean has 1 values; input 'x' has 3 channels"):
        open_data(tmp_path, IMAGE, preprocess=parse_preprocess("mean=0.5"))
    with pytest.raises(InputError, match="image folders feed single-input models"):
        open_data(tmp_path, TWO_INPUTS)
    with pytest.raises(InputError, match=r"is not an image batch \(4-D\)"):
        open_data(tmp_path, DYNAMIC)


def test_image_folder_without_pillow(tmp_path, monkeypatch):
    _save_image(tmp_path / "a.png", np.zeros((4, 6, 3)))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(InputError, match=r"needs Pillow: pip install 'onnxopt\[images\]'"):
        open_data(tmp_path, IMAGE)


# --- Python objects -----------------------------------------------------------------------


class Reader:
    """The shape of ORT's CalibrationDataReader, with an optional rewind()."""

    def __init__(self, feeds):
        self.feeds = feeds
        self.position = 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]


class RewindReader(Reader):
    def rewind(self):
        self.position = 0


def test_python_list_and_factory_are_reiterable():
    feeds = [{"x": rows(2)}, {"x": rows(1)}]
    for source in (open_data(feeds, DYNAMIC), open_data(lambda: iter(feeds), DYNAMIC)):
        assert isinstance(source, IterableSource)
        assert [b.shape for b in batches(source)] == [(2, 3), (1, 3)]
        assert [b.shape for b in batches(source)] == [(2, 3), (1, 3)]


def test_calibration_data_reader():
    source = open_data(RewindReader([{"x": rows(2)}]), DYNAMIC)
    assert len(batches(source)) == 1 and len(batches(source)) == 1
    once = open_data(Reader([{"x": rows(2)}]), DYNAMIC)
    assert len(batches(once)) == 1
    with pytest.raises(InputError, match="already read and has no rewind"):
        batches(once)


def test_one_shot_iterator_cannot_be_read_twice():
    source = open_data(iter([{"x": rows(1)}]), DYNAMIC)
    assert len(batches(source)) == 1
    with pytest.raises(InputError, match="already consumed"):
        batches(source)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ([rows(1)], "data item 0: expected a dict of input name -> array, got ndarray"),
        ({"y": rows(1)}, "data item 0: missing input 'x' (model inputs: x)"),
        ({"x": rows(1), "z": rows(1)}, "data item 0: 'z' is not a model input (model inputs: x)"),
        ({"x": [[1.0, 2.0, 3.0]]}, "data item 0: input 'x' must be a numpy array, got list"),
        ({"x": rows(1).ravel()}, "data item 0: input 'x' expects float32[N,3], got shape [3]"),
    ],
)
def test_python_item_errors(item, message):
    with pytest.raises(InputError) as info:
        list(open_data([item] if isinstance(item, dict) else [item[0]], DYNAMIC))
    assert str(info.value) == message


def test_shared_symbolic_dim_must_agree():
    feed = {"a": rows(2), "b": np.zeros((3, 4), np.int64)}
    with pytest.raises(InputError) as info:
        check_feed(feed, input_specs(TWO_INPUTS), "feed")
    assert str(info.value) == "feed: input 'b' dim 0 ('batch') is 3, but input 'a' has batch=2"


# --- random -------------------------------------------------------------------------------


def test_random_is_explicit_seeded_and_warns(caplog):
    with caplog.at_level(logging.WARNING):
        source = open_data("random", TWO_INPUTS, batch_size=4, seed=3)
    assert isinstance(source, RandomSource) and source.synthetic
    assert "fidelity numbers computed on them are meaningless" in caplog.text
    first, again = list(source), list(source)
    assert first[0]["a"].shape == (4, 3) and first[0]["b"].dtype == np.int64
    np.testing.assert_array_equal(first[0]["a"], again[0]["a"])
    assert open_data(None, DYNAMIC) is None


def test_random_with_explicit_shapes():
    model = parse(HEADER + "g (float[N, T] x) => (float[N, T] y) { y = Relu(x) }")
    source = RandomSource(input_specs(model), shapes={"x": (2, 5)})
    assert next(iter(source))["x"].shape == (2, 5)
    with pytest.raises(InputError, match="--shape x:2x5x1 does not fit input float32"):
        RandomSource(input_specs(model), shapes={"x": (2, 5, 1)})


def test_parse_shapes():
    assert parse_shapes(["input:1x3x224x224", "ids:2X7"]) == {
        "input": (1, 3, 224, 224),
        "ids": (2, 7),
    }
    for bad in ("input", "input:", "input:1xax3", ":1x2", "x:0x2"):
        with pytest.raises(InputError, match="bad --shape"):
            parse_shapes([bad])


def test_streamed_tensors_come_in_order_up_to_max_samples_and_stop_cleanly():
    model = parse(HEADER + "g (float[N, 3] x) => (float[N, 3] y) { h = Neg(x)\n y = Relu(h) }")
    batches = [{"x": np.full((3, 3), float(i), np.float32)} for i in range(5)]
    streamed = list(stream_tensors(model, ["h", "x"], batches, provider="cpu", max_samples=7))
    assert [rows for _, rows in streamed] == [3, 3, 3]  # the batch reaching 7 is the last
    for i, (values, _) in enumerate(streamed):
        np.testing.assert_array_equal(values["h"], -batches[i]["x"])
        assert values["x"] is batches[i]["x"]
    stream = stream_tensors(model, ["h"], batches, provider="cpu")
    first, _ = next(stream)
    stream.close()  # the run going ahead finishes; nothing hangs
    np.testing.assert_array_equal(first["h"], -batches[0]["x"])


CHAIN = HEADER + "g (float[N, 64] x) => (float[N, 64] y) { h = Neg(x)\n y = Relu(h) }"


def test_streamed_runs_hold_at_most_the_byte_budget_and_fixed_batches_stay_whole(monkeypatch):
    monkeypatch.setattr(probe_module, "RUN_BYTES", 2 * (2 * 64 * 4))  # two samples of h, y
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    batches = [{"x": x[:5]}, {"x": x[5:]}]
    streamed = list(stream_tensors(parse(CHAIN), ["h", "y"], batches, provider="cpu"))
    assert [rows for _, rows in streamed] == [2, 2, 1, 2, 1]
    np.testing.assert_array_equal(np.concatenate([v["h"] for v, _ in streamed]), -x)
    np.testing.assert_array_equal(np.concatenate([v["y"] for v, _ in streamed]), np.maximum(-x, 0))
    fixed = parse(CHAIN.replace("[N, 64]", "[4, 64]"))
    whole = [{"x": x[:4]}, {"x": x[4:]}]
    assert [r for _, r in stream_tensors(fixed, ["h"], whole, provider="cpu")] == [4, 4]


def test_tensors_of_one_sample_over_the_budget_are_read_in_groups(monkeypatch):
    monkeypatch.setattr(probe_module, "RUN_BYTES", 64 * 4 + 8)  # one tensor of one sample
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    streamed = list(stream_tensors(parse(CHAIN), ["y", "h", "x"], [{"x": x}], provider="cpu"))
    # a run per sample and group, in graph order; samples counted on the last group
    assert [(sorted(v), rows) for v, rows in streamed] == [(["h", "x"], 0), (["y"], 1)] * 3
    np.testing.assert_array_equal(np.concatenate([v["h"] for v, _ in streamed[::2]]), -x)
    np.testing.assert_array_equal(np.concatenate([v["x"] for v, _ in streamed[::2]]), x)
    np.testing.assert_array_equal(
        np.concatenate([v["y"] for v, _ in streamed[1::2]]), np.maximum(-x, 0)
    )
