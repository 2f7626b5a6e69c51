"""``@hitl.step`` and ``@hitl.workflow`` keep the decorated function's types (checked by running mypy on a user's
module)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

USER_MODULE = """
from typing import Any

import hitl


@hitl.step(name="typing.draft", transactional=True)
def draft(topic: str, words: int = 100) -> dict[str, str]:
    return {"topic": topic}


@hitl.step
def count(n: int) -> int:
    return n


@hitl.workflow("typing-flow")
def flow(payload: dict[str, str]) -> Any:
    return draft.s(payload["topic"]) | hitl.wait_for_approval.s(key="k") | count.s()


reveal_type(draft("tides"))
reveal_type(count(1))
total: int = count(2)
draft(1)
count("x")
flow(3)
"""


def test_decorators_keep_the_functions_parameters_and_return_types(tmp_path: Path) -> None:
    module = tmp_path / "user_flows.py"
    module.write_text(textwrap.dedent(USER_MODULE))
    argv = [
        "--strict",
        "--follow-imports=silent",
        "--no-error-summary",
        "--cache-dir",
        str(tmp_path / "c"),
        str(module),
    ]
    out, _err, status = api.run(argv)
    lines = [line.split(": ", 1)[1] for line in out.splitlines() if ": " in line]
    assert status == 1
    assert 'note: Revealed type is "dict[str, str]"' in lines
    assert 'note: Revealed type is "int"' in lines
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 3, out
    assert 'Argument 1 to "__call__" of "StepTask" has incompatible type "int"; expected "str"' in errors[0]
    assert 'Argument 1 to "__call__" of "StepTask" has incompatible type "str"; expected "int"' in errors[1]
    assert 'Argument 1 to "flow" has incompatible type "int"; expected "dict[str, str]"' in errors[2]
