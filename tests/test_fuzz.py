"""Hypothesis fuzzing: random small CNNs and MLPs through every registered pass, alone and as
one pipeline. Oracle: the pass manager's structural and numeric gates (a rollback for a broken
model, or any rollback of an exact pass, is a failure) plus `tests.oracle.assert_sound` (the
written file loads in ORT and matches the input: 1e-4 relative for exact passes, the promised
cosine for lossy ones). Derandomized with a bounded number of examples: same cases every run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.oracle import assert_sound, feeds_for, registered_passes, run_pipeline
from tests.zoo.random_graphs import CNN_BLOCKS, MLP_BLOCKS, WIDTHS, build_cnn, build_mlp
from tests.zoo.small_cnn import initializers_to_constants

PASSES = registered_passes()
PIPELINES = [*PASSES, ",".join(PASSES)]

FUZZ = settings(
    max_examples=16,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

params = st.fixed_dictionaries(
    {
        "groups": st.integers(0, 2),  # plain, depthwise, two groups
        "multiplier": st.integers(1, 2),
        "width": st.integers(0, len(WIDTHS) - 1),
        "kernel": st.sampled_from([1, 3]),
        "bias": st.booleans(),
        "bn": st.booleans(),
        "act": st.integers(0, 2),  # none, Relu, Clip(0, 6)
        "max": st.booleans(),
        "gemm": st.booleans(),
        "variant": st.integers(0, 3),  # conv padding/dilation, Gemm transB/alpha/beta/bias/BN
    }
)


def _check_every_pipeline(model) -> None:
    feeds = feeds_for(model, seed=7, batches=3, dims={"N": 4, "H": 8, "W": 8})
    with tempfile.TemporaryDirectory(prefix="onnxopt-fuzz-") as scratch:
        for passes in PIPELINES:
            out = Path(scratch) / f"{passes.replace(',', '-')}.onnx"
            outcome = run_pipeline(model, passes, feeds, out)
            assert outcome.kind == "ran", (passes, outcome.message)
            assert_sound(model, outcome, feeds)


_PLAIN = {"groups": 0, "multiplier": 1, "width": 0, "kernel": 1, "bias": False, "bn": False}
_PLAIN.update({"act": 0, "max": False, "gemm": False, "variant": 0})
PRUNE_NO_READER = [
    ("residual", _PLAIN),
    ("conv", _PLAIN),
    ("conv", {**_PLAIN, "groups": 1}),
    ("deconv", _PLAIN),
    ("conv", {**_PLAIN, "groups": 1, "multiplier": 2}),
]
"""Found by this test: the only reader of a prunable group was a ConvTranspose, so prune asked
onnxruntime for a session with no outputs and crashed."""


@FUZZ
@example(
    recipe=PRUNE_NO_READER, seed=0, channels=3, head="pool", opset=13, dynamic=False, constants=True
)
@given(
    recipe=st.lists(st.tuples(st.sampled_from(CNN_BLOCKS), params), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    channels=st.sampled_from([1, 3, 4]),
    head=st.sampled_from(["pool", "flat"]),
    opset=st.sampled_from([13, 17, 21]),
    dynamic=st.booleans(),
    constants=st.booleans(),
)
def test_random_cnns_survive_every_pass(recipe, seed, channels, head, opset, dynamic, constants):
    model = build_cnn(
        recipe, seed=seed, channels=channels, size=8, head=head, opset=opset, dynamic=dynamic
    )
    _check_every_pipeline(initializers_to_constants(model) if constants else model)


@FUZZ
@given(
    recipe=st.lists(st.tuples(st.sampled_from(MLP_BLOCKS), params), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
    features=st.sampled_from([4, 12, 20]),
)
def test_random_mlps_survive_every_pass(recipe, seed, features):
    _check_every_pipeline(build_mlp(recipe, seed=seed, features=features))
