"""Pipeline text that round-trips: `cleanup,prune{ratio=0.3},quant{exclude=[a,b]}`.

Grammar: items separated by commas; an item is a pass name with optional `{key=value,...}`;
a value is a bare word, a quoted string ('...' or "..."), or a `[...]` list of those. Config
files (YAML or JSON) hold the same content: a list whose items are a pass name or a mapping
`{name: {option: value}}`, optionally under a top-level `passes:` key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from onnxopt.errors import InputError, OptionError
from onnxopt.infra.options import all_items, build_options, format_value, non_default_items
from onnxopt.infra.registry import get_pass_class

_SPECIAL = ",{}[]="


@dataclass(frozen=True)
class PipelineStep:
    name: str
    options: Any

    def to_text(self, *, full: bool = False) -> str:
        items = all_items(self.options) if full else non_default_items(self.options)
        if not items:
            return self.name
        inner = ",".join(f"{key}={format_value(value)}" for key, value in items)
        return f"{self.name}{{{inner}}}"


@dataclass(frozen=True)
class Pipeline:
    steps: tuple[PipelineStep, ...]

    def to_text(self, *, full: bool = False) -> str:
        return ",".join(step.to_text(full=full) for step in self.steps)

    def __str__(self) -> str:
        return self.to_text()


def parse_pipeline(text: str) -> Pipeline:
    """Parse pipeline text into steps with typed options; OptionError on any mistake."""
    raw_steps = _Parser(text).parse()
    if not raw_steps:
        raise OptionError("empty pipeline: name at least one pass (see `onnxopt passes`)")
    return _build(raw_steps)


def load_pipeline_file(path: str | Path) -> Pipeline:
    """Read a YAML or JSON pipeline config (JSON is valid YAML, so one loader serves both)."""
    config_path = Path(path)
    try:
        content = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config file not found: {config_path}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read config {config_path}: {first}") from None
    if isinstance(content, dict) and "passes" in content:
        content = content["passes"]
    if isinstance(content, str):
        return parse_pipeline(content)
    if not isinstance(content, list):
        raise OptionError(
            f"config {config_path}: expected a list of passes (or a 'passes:' key holding one)"
        )
    raw_steps = [_config_item(item, config_path) for item in content]
    if not raw_steps:
        raise OptionError(f"config {config_path}: the pass list is empty")
    return _build(raw_steps)


def _config_item(item: Any, path: Path) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        name, options = next(iter(item.items()))
        if options is None:
            options = {}
        if isinstance(options, dict):
            return str(name), options
    raise OptionError(
        f"config {path}: each pass is a name or {{name: {{option: value}}}}, got {item!r}"
    )


def _build(raw_steps: list[tuple[str, dict[str, Any]]]) -> Pipeline:
    steps = []
    for name, raw in raw_steps:
        pass_cls = get_pass_class(name)
        steps.append(PipelineStep(name, build_options(pass_cls.Options, raw, name)))
    return Pipeline(tuple(steps))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> list[tuple[str, dict[str, Any]]]:
        steps = []
        self._skip_space()
        if self.pos == len(self.text):
            return steps
        while True:
            steps.append(self._step())
            self._skip_space()
            if self.pos == len(self.text):
                return steps
            self._expect(",")

    def _step(self) -> tuple[str, dict[str, Any]]:
        name = self._word("a pass name")
        options: dict[str, Any] = {}
        self._skip_space()
        if self._peek() == "{":
            self.pos += 1
            self._skip_space()
            while self._peek() != "}":
                key = self._word("an option name")
                if key in options:
                    raise self._error(f"option '{key}' given twice")
                self._expect("=")
                options[key] = self._value()
                self._skip_space()
                if self._peek() != "}":
                    self._expect(",")
                    self._skip_space()
            self.pos += 1
        return name, options

    def _value(self) -> Any:
        self._skip_space()
        if self._peek() != "[":
            return self._atom()
        self.pos += 1
        items = []
        self._skip_space()
        while self._peek() != "]":
            items.append(self._atom())
            self._skip_space()
            if self._peek() != "]":
                self._expect(",")
        self.pos += 1
        return items

    def _atom(self) -> str:
        self._skip_space()
        quote = self._peek()
        if quote in ("'", '"'):
            return self._quoted(quote)
        return self._word("a value")

    def _quoted(self, quote: str) -> str:
        self.pos += 1
        chars = []
        while True:
            ch = self._peek()
            if ch == "":
                raise self._error("unterminated quoted value")
            self.pos += 1
            if ch == "\\" and self._peek():
                chars.append(self._peek())
                self.pos += 1
            elif ch == quote:
                return "".join(chars)
            else:
                chars.append(ch)

    def _word(self, what: str) -> str:
        self._skip_space()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _SPECIAL + "'\"":
            self.pos += 1
        word = self.text[start : self.pos].strip()
        if not word:
            raise self._error(f"expected {what}")
        return word

    def _expect(self, ch: str) -> None:
        self._skip_space()
        if self._peek() != ch:
            raise self._error(f"expected '{ch}'")
        self.pos += 1

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def _error(self, message: str) -> OptionError:
        found = repr(self._peek()) if self._peek() else "end of text"
        return OptionError(
            f"bad pipeline text {self.text!r}: {message} at position {self.pos} (found {found})"
        )
