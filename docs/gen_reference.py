"""Build-time generation for the docs site: a MkDocs hook (``hooks:`` in ``mkdocs.yml``).

Nothing here is hand-copied from the code; each table is read from the object that defines it:

- ``<!-- hitl:settings -->`` in a page becomes the table of every setting, from the fields (type, default,
  description) of :class:`hitl.infra.settings.Settings`.
- ``<!-- hitl:http-endpoints -->`` becomes the table of the HTTP API's endpoints, from the OpenAPI schema of
  the FastAPI app (:func:`hitl.api.app.create_app`); the schema itself is added to the site as ``openapi.json``.
- Before any page is rendered, the ``hitl`` click group is checked to hold every command, so that the
  mkdocs-click reference (``reference/cli.md``) cannot silently miss one.

A failure in any of these fails ``mkdocs build`` (a ``PluginError`` names what is wrong).
"""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path
from typing import Any

import click
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

SETTINGS_MARKER = "<!-- hitl:settings -->"
HTTP_MARKER = "<!-- hitl:http-endpoints -->"

#: Commands the reference must show (the group is built with ``add_command`` in :mod:`hitl.cli.main`).
EXPECTED_COMMANDS = {"start", "approve", "reject", "approvals", "runs", "worker", "beat", "dev", "demo", "serve"}
EXPECTED_COMMANDS |= {"broker", "db", "audit", "keys", "groups", "notifications", "sweep", "relay", "health"}


def _cell(text: str) -> str:
    """``text`` made safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _default(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, list | dict | bool):
        value = json.dumps(value)
    return f"`{value}`"


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    for prefix in ("typing.", "pydantic.types.", "pathlib."):
        text = text.replace(prefix, "")
    return f"`{text}`"


def settings_table() -> str:
    """The Markdown table of every ``HITL_*`` variable, in the order ``Settings`` declares them."""
    from hitl.infra.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        if not field.description:
            raise PluginError(f"setting {name!r} has no description (Field(description=...) in hitl/infra/settings.py)")
        default = field.default_factory() if field.default_factory is not None else field.default
        variable = f"`{prefix}{name.upper()}`"
        rows.append(f"| {variable} | {_type(field.annotation)} | {_default(default)} | {_cell(field.description)} |")
    return "\n".join(rows)


def openapi_schema() -> dict[str, Any]:
    """The HTTP API's OpenAPI schema, as ``hitl serve`` serves it at ``/openapi.json``."""
    from hitl.api.app import create_app

    return create_app().openapi()


def http_table(schema: dict[str, Any]) -> str:
    """The Markdown table of the JSON API's endpoints: method, path, and the first paragraph of each description."""
    rows = ["| method | path | what it does |", "| --- | --- | --- |"]
    for path, item in schema["paths"].items():
        if not path.startswith("/api/"):
            continue  # the inbox pages and one-click links are HTML, described in the how-to guide
        for method, op in item.items():
            text = (op.get("description") or op.get("summary") or "").split("\n\n")[0]
            rows.append(f"| `{method.upper()}` | `{path}` | {_cell(text)} |")
    return "\n".join(rows)


def whole_cli() -> click.Group:
    """The ``hitl`` click group with every command added; raises ``PluginError`` when one is missing."""
    from hitl.cli import cli

    missing = EXPECTED_COMMANDS - set(cli.list_commands(click.Context(cli)))
    if missing:
        raise PluginError(f"the hitl CLI group lacks {', '.join(sorted(missing))}: the CLI reference would be partial")
    return cli


# ---------------------------------------------------------------- MkDocs events

_schema: dict[str, Any] | None = None


def on_config(config: Any) -> Any:
    """Make the CLI group whole before mkdocs-click imports it; read the OpenAPI schema once."""
    global _schema
    whole_cli()
    _schema = openapi_schema()
    return config


#: A snippet marker with spaces in it (``--8 < --"file"``, as a Python formatter rewrites one inside a code block):
#: pymdownx.snippets would leave it as text instead of including the file.
_MANGLED_SNIPPET = re.compile(r"--8\s+<\s*--|--8<\s+--(?=\S)|--8\s*<\s+--")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Put the generated tables where the page's markers are; refuse a mangled snippet line."""
    if _MANGLED_SNIPPET.search(markdown):
        raise PluginError(f'{page.file.src_path}: a mangled snippet line (write it `--8<-- "path"`)')
    if SETTINGS_MARKER in markdown:
        markdown = markdown.replace(SETTINGS_MARKER, settings_table())
    if HTTP_MARKER in markdown:
        assert _schema is not None
        markdown = markdown.replace(HTTP_MARKER, http_table(_schema))
    return markdown


def on_files(files: Files, config: Any) -> Files:
    """Add the OpenAPI schema to the site as ``openapi.json`` (``reference/http.md`` links to it)."""
    assert _schema is not None
    files.append(File.generated(config, "openapi.json", content=json.dumps(_schema, indent=2) + "\n"))
    return files
