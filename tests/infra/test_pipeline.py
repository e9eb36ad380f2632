"""Pipeline text and config parsing: typed options, round trips, one-line errors."""

from __future__ import annotations

import json

import pytest

from onnxopt.errors import InputError, OptionError
from onnxopt.infra.pipeline import load_pipeline_file, parse_pipeline


def test_plain_names_parse():
    pipeline = parse_pipeline("cleanup")
    assert [s.name for s in pipeline.steps] == ["cleanup"]
    assert pipeline.steps[0].options.fold_bn is True


def test_options_are_typed():
    pipeline = parse_pipeline("cleanup{fold_bn=false, fold_limit_mb=2.5}")
    options = pipeline.steps[0].options
    assert options.fold_bn is False
    assert options.fold_limit_mb == 2.5


@pytest.mark.parametrize(
    "text",
    [
        "cleanup",
        "cleanup{fold_bn=false}",
        "cleanup{fold_limit_mb=0.5},cleanup{remove_passthrough=false}",
    ],
)
def test_text_round_trips(text):
    pipeline = parse_pipeline(text)
    assert parse_pipeline(pipeline.to_text()) == pipeline
    assert parse_pipeline(pipeline.to_text(full=True)) == pipeline
    assert pipeline.to_text() == text


def test_full_text_lists_every_option():
    text = parse_pipeline("cleanup").to_text(full=True)
    assert (
        text
        == "cleanup{fold_bn=true,fold_constants=true,fold_limit_mb=64.0,remove_passthrough=true,"
        "fold_pad=true,div_to_mul=true}"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nosuchpass", "unknown pass 'nosuchpass' (available passes: "),
        ("cleanup{bogus=1}", "has no option 'bogus' (valid options: fold_bn, fold_constants"),
        ("cleanup{fold_bn=maybe}", "expected true or false"),
        ("cleanup{fold_limit_mb=-1}", "must be within [0, inf]"),
        ("cleanup{fold_limit_mb=abc}", "could not convert"),
        ("cleanup{fold_bn=true", "expected ','"),
        ("cleanup,,cleanup", "expected a pass name"),
        ("", "empty pipeline"),
        ("cleanup{fold_bn=true,fold_bn=false}", "given twice"),
    ],
)
def test_bad_text_is_one_line_error(text, message):
    with pytest.raises(OptionError) as info:
        parse_pipeline(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_yaml_config(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("passes:\n  - cleanup\n  - cleanup: {fold_bn: false, fold_limit_mb: 1}\n")
    pipeline = load_pipeline_file(config)
    assert pipeline == parse_pipeline("cleanup,cleanup{fold_bn=false,fold_limit_mb=1}")


def test_json_config(tmp_path):
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps([{"cleanup": {"fold_constants": False}}]))
    assert load_pipeline_file(config) == parse_pipeline("cleanup{fold_constants=false}")


def test_config_type_errors(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("- cleanup: {fold_bn: [1, 2]}\n")
    with pytest.raises(OptionError, match="expected true or false"):
        load_pipeline_file(config)
    config.write_text("{not: [valid\n")
    with pytest.raises(InputError, match="cannot read config"):
        load_pipeline_file(config)
    with pytest.raises(InputError, match="config file not found"):
        load_pipeline_file(tmp_path / "missing.yaml")
