"""Request body parsers."""

from __future__ import annotations

import codecs
import json
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.settings import api_settings
from rest_framework.utils.json import strict_constant

from .errors import InvalidRequest

# Deeper than this is refused as bad JSON. No request of the contract nests past 4 levels;
# the code that hashes a body for Idempotency-Key, renders errors and stores a dataset
# recurses, and met Python's recursion limit at ~475 levels (a 500).
MAX_DEPTH = 64


def nested_too_deeply(value: Any) -> bool:
    """Whether any array or object in ``value`` sits more than MAX_DEPTH levels down
    (iterative: what it checks cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth >= MAX_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


class DuplicateName(ValueError):
    """A JSON object named a member twice (raised by ``unique_names``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s ``object_pairs_hook`` refusing a member named twice, at any depth
    (``json`` itself keeps the last, silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateName(name)
            seen.add(name)
    return obj


class _Pairs(list[tuple[str, Any]]):
    """An object's members as read, repeats kept (``duplicate_path``)."""


def duplicate_path(text: str, **options: Any) -> str | None:
    """Where the first member named twice is, in document order, as errors name a place
    (``examples[0].text``, ``hyperparameters.epochs``): ``unique_names`` knows only the name.
    Read again on that error alone, so it costs a valid body nothing."""

    def find(value: Any, path: str) -> str | None:
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for name, item in value:
                here = f"{path}.{name}" if path else name
                if name in seen:
                    return here
                seen.add(name)
                if (found := find(item, here)) is not None:
                    return found
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if (found := find(item, f"{path}[{index}]")) is not None:
                    return found
        return None

    try:
        return find(json.loads(text, object_pairs_hook=_Pairs, **options), "")
    except (ValueError, RecursionError):
        return None


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with two refusals of its own:

    - an object that names a member twice is a 400 ``duplicate_parameter``: ``json`` keeps
      the last value silently (``{"model": "a", "model": "b"}`` would run, and bill, "b"),
      where another reader of the same body may take the first (RFC 8259: names SHOULD be
      unique); measured, the check costs ~3 us on a one-input classification;
    - JSON nested deeper than MAX_DEPTH levels is bad JSON (Python's own limit, ~1,000
      levels of ``[``, made ``json`` raise RecursionError, which DRF let through as a 500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        # NOTE: always UTF-8, whatever ``charset`` the Content-Type names: JSON exchanged
        # between systems is UTF-8 (RFC 8259, 8.1) and application/json has no charset
        # parameter; some clients label UTF-8 bodies latin-1, and decoding them so changed
        # the texts classified (and billed) without a word.
        constant = strict_constant if api_settings.STRICT_JSON else None
        raw = stream.read()
        if raw.startswith(codecs.BOM_UTF8):  # RFC 8259: a parser may ignore one
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(
                f"JSON parse error - the body is not UTF-8 (byte 0x{raw[exc.start]:02x} at "
                f"offset {exc.start})."
            ) from None
        try:
            data = json.loads(text, parse_constant=constant, object_pairs_hook=unique_names)
        except DuplicateName as exc:
            param = duplicate_path(text, parse_constant=constant) or exc.name
            raise InvalidRequest(
                f"{param} is given more than once.", code="duplicate_parameter", param=param
            ) from None
        except RecursionError:
            raise ParseError("JSON parse error - it is nested too deeply.") from None
        except ValueError as exc:
            if str(exc).startswith("Exceeds the limit"):  # int() of a 4,301+ digit number
                raise ParseError("JSON parse error - a number has over 4,300 digits.") from None
            raise ParseError(f"JSON parse error - {exc}") from None
        # (Walked only when the text has that many brackets at all: the walk cost ~30 us on
        # a 96-input classification, twice its parse.)
        deep_enough = text.count("[") + text.count("{") > MAX_DEPTH
        if deep_enough and isinstance(data, dict | list) and nested_too_deeply(data):
            raise ParseError(
                f"JSON parse error - it is nested too deeply (over {MAX_DEPTH} levels)."
            )
        return data
