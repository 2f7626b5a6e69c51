"""Keeping secrets out of output: URLs with their password masked, and known passwords scrubbed from text.

Every URL hitl prints, logs, raises or returns as JSON (database, broker, result backend, webhook) goes
through :func:`mask_url`; messages built from a driver's or library's error text go through :func:`scrub`,
which also catches a password that a library copied into its own message.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from hitl.infra.settings import Settings

#: What a password is replaced with (SQLAlchemy's own mask).
MASK = "***"
#: ``scheme://user:password@`` in free text, for URLs neither SQLAlchemy nor kombu can parse.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<password>[^@\s]*)@")


def mask_url(url: str | None) -> str:
    """Return ``url`` with its password replaced by ``***``; ``''`` for None.

    SQLAlchemy's ``URL.render_as_string(hide_password=True)`` does it for URLs it parses (it keeps the query
    string); kombu's ``maybe_sanitize_url`` for other broker URLs; a pattern for anything else. Several URLs
    joined by ``;`` (kombu's fail-over list) are masked one by one. A URL without a password is returned as it
    is.
    """
    if not url:
        return ""
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        pass
    from kombu.utils.url import maybe_sanitize_url

    try:
        masked = str(maybe_sanitize_url(url, mask=MASK))
    except ValueError:
        masked = url
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", masked)


def passwords(settings: Settings) -> set[str]:
    """The passwords in ``settings``: of every ``*_url`` and result backend setting, and the SMTP password and
    secret key. Each comes as written and URL-decoded."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, str) and (name.endswith("_url") or name == "result_backend"):
            for part in value.split(";"):
                try:
                    password = urlsplit(part).password
                except ValueError:
                    password = None
                if password:
                    found |= {password, unquote(password)}
    for secret in (settings.smtp_password, settings.secret_key):
        if secret is not None and secret.get_secret_value():
            found.add(secret.get_secret_value())
    return found


def mask_urls(text: str) -> str:
    """Return ``text`` with the password of every URL in it replaced by ``***`` (no settings read)."""
    return _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)


def scrub(text: str, settings: Settings | None = None) -> str:
    """Return ``text`` with every URL password masked and each password of ``settings`` (default: the settings
    in force, when they can be read) replaced by ``***``."""
    text = mask_urls(text)
    if settings is None:
        from hitl.infra.settings import get_settings

        try:
            settings = get_settings()
        except Exception:  # invalid settings: their error says so; the pattern above still applies
            return text
    for password in sorted(passwords(settings), key=len, reverse=True):
        if len(password) >= 3:  # a one- or two-character password would mask ordinary words
            text = text.replace(password, MASK)
    return text


def one_line(text: str) -> str:
    """Return ``text`` on one line: its lines stripped and joined by ``; `` (drivers report on several)."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())
