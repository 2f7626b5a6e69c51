"""Strict JSON at the door (:mod:`hitl.infra.jsonsafe`): what is refused, and what still parses."""

from __future__ import annotations

import pytest

from approvals.errors import InvalidPayload
from hitl.infra.jsonsafe import MAX_DEPTH, check_size, loads


def test_strings_that_spell_nan_and_large_finite_numbers_still_parse() -> None:
    assert loads('{"s": "NaN", "big": 1e308, "neg": -1.5e-300, "n": 12345678901234567890}', "x") == {
        "s": "NaN",
        "big": 1e308,
        "neg": -1.5e-300,
        "n": 12345678901234567890,
    }
    assert loads('"潮"'.encode(), "x") == "潮"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1E400"])
def test_non_finite_numbers_are_refused(token: str) -> None:
    with pytest.raises(InvalidPayload, match=rf"^x holds {token}; JSON numbers must be finite$"):
        loads(f'{{"a": [1, {token}]}}', "x")


def test_nesting_stops_at_max_depth() -> None:
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") is not None
    with pytest.raises(InvalidPayload, match=rf"^x is nested more than {MAX_DEPTH} levels deep$"):
        loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "x")
    with pytest.raises(InvalidPayload, match="nested more than"):
        loads('{"a":' * 50_000 + "1" + "}" * 50_000, "x")


def test_bytes_must_be_utf8() -> None:
    with pytest.raises(InvalidPayload, match=r"^x is not valid UTF-8 \(byte 3\)$"):
        loads(b'"Zo\xeb"', "x")


def test_values_from_python_are_held_to_the_same_rules() -> None:
    with pytest.raises(InvalidPayload, match=r"^payload holds NaN or Infinity"):
        check_size({"a": [float("-inf")]})
    deep: list[object] = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(InvalidPayload, match="nested more than"):
        check_size(deep)
    assert check_size({"ok": "潮"}) > 0
