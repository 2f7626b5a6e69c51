"""Who is asking: API keys, signed one-click links, approval-scoped tokens and inbox sessions.

Every HTTP request resolves to a :class:`Principal`: an actor (recorded as the decider of what it decides)
and what it may do. Four credentials lead to one:

- **API key** (``hk_<id>_<secret>``), made by ``hitl keys create``; only its SHA-256 is stored. Its scopes
  (:class:`~approvals.status.Scope`) say what it may do.
- **Approval token** (``hat.<claims>.<mac>``), made by a key with the ``delegate`` scope for one person and
  one approval: it reads and decides that approval and nothing else (for approval cards in a web app).
- **Signed link** (``hlk.<claims>.<mac>``), for email and chat: one approval, one action, one person,
  expiring, single use (its nonce is stored with the decision it makes).
- **Inbox session** (``hss.<claims>.<mac>``), the browser cookie set when someone signs in to the inbox with
  an API key; it names the key, so revoking the key ends the session.

Tokens are HMAC-SHA256 over their claims with the server secret (``HITL_SECRET_KEY``): they are checked
without a database read, and altering any claim breaks the MAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import CursorResult, select, update

from approvals.errors import InvalidPayload, LinkInvalid, NotAllowed, Unauthenticated
from approvals.models import ApiKey, utcnow
from approvals.schemas import Decision, Outcome
from approvals.status import Scope
from hitl.core import completion
from hitl.infra.db import session_scope
from hitl.infra.ids import new_id
from hitl.infra.settings import get_settings

KEY_PREFIX = "hk_"
TokenKind = Literal["hat", "hlk", "hss"]
#: The actions a signed link can carry, and the outcome each records.
LINK_ACTIONS: dict[str, Outcome] = {"approve": Outcome.APPROVED, "reject": Outcome.REJECTED}
DEFAULT_SCOPES = (Scope.READ, Scope.DECIDE)


@dataclass(frozen=True)
class Principal:
    """The actor behind a request and what it may do.

    ``approval_id`` is set for approval tokens and links: such a principal may touch that approval only.
    """

    actor: str
    scopes: frozenset[Scope]
    via: Literal["key", "token", "link", "session"]
    approval_id: str | None = None
    key_id: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)

    def allows(self, scope: Scope, approval_id: str | None = None) -> bool:
        """Whether this principal may use ``scope`` (on ``approval_id``, for approval-bound principals)."""
        if scope not in self.scopes:
            return False
        return self.approval_id is None or self.approval_id == approval_id


def require(principal: Principal, scope: Scope, approval_id: str | None = None) -> None:
    """Raise :class:`NotAllowed` unless ``principal`` may use ``scope`` (on ``approval_id``)."""
    if not principal.allows(scope, approval_id):
        what = f"approval {approval_id}" if approval_id else "this"
        bound = f" (its token is for approval {principal.approval_id} only)" if principal.approval_id else ""
        raise NotAllowed(f"{principal.actor} may not {scope.value} {what}{bound}")


def decide_as(
    principal: Principal,
    approval_id: str,
    outcome: Outcome | str,
    *,
    comment: str | None = None,
    data: dict[str, Any] | None = None,
    channel: str = "http",
) -> Decision:
    """Decide ``approval_id`` as ``principal``'s actor; a principal that may not decide it is refused.

    A refusal is recorded in the run's timeline (``decision_refused``) and changes nothing else. Links pass
    their nonce so the link decides once.

    Raises:
        NotAllowed: the principal lacks the ``decide`` scope or is bound to another approval (recorded).
        and every error of :func:`hitl.core.completion.decide`.
    """
    if not principal.allows(Scope.DECIDE, approval_id):
        reason = (
            f"{principal.actor} may not decide approval {approval_id}"
            + (f": the {principal.via} is for approval {principal.approval_id}" if principal.approval_id else "")
            + ("" if Scope.DECIDE in principal.scopes else ": the key lacks the 'decide' scope")
        )
        raise completion.refuse(
            approval_id,
            actor=principal.actor,
            channel=channel,
            reason=reason,
            outcome=str(outcome),
            comment=comment,
            payload={} if data is None else data,
        )
    nonce = principal.claims.get("n") if principal.via == "link" else None
    return completion.decide(
        approval_id, outcome, actor=principal.actor, comment=comment, data=data, channel=channel, link_nonce=nonce
    )


# ---------------------------------------------------------------- API keys


class KeyView(BaseModel):
    """An API key as listed (never its secret)."""

    id: str
    actor: str
    scopes: list[Scope]
    note: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    actor: str, scopes: tuple[Scope, ...] | list[Scope] = DEFAULT_SCOPES, note: str = ""
) -> tuple[KeyView, str]:
    """Create an API key for ``actor``; return its view and the key itself (shown once, stored hashed).

    Raises:
        InvalidPayload: an empty actor or no scopes.
    """
    actor = actor.strip()
    if not actor:
        raise InvalidPayload("a key needs an actor (who acts with it)")
    if not scopes:
        raise InvalidPayload("a key needs at least one scope")
    key_id = new_id()[:12]
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        id=key_id, actor=actor, scopes=sorted({Scope(s).value for s in scopes}), key_hash=_hash(secret), note=note
    )
    with session_scope() as s:
        s.add(row)
        s.flush()
        view = _key_view(row)
    return view, secret


def _key_view(row: ApiKey) -> KeyView:
    return KeyView(
        id=row.id,
        actor=row.actor,
        scopes=[Scope(x) for x in row.scopes],
        note=row.note,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def list_keys() -> list[KeyView]:
    """Return every API key, oldest first, revoked ones included."""
    with session_scope() as s:
        return [_key_view(k) for k in s.scalars(select(ApiKey).order_by(ApiKey.created_at))]


def revoke_key(key_id: str) -> None:
    """Revoke key ``key_id`` (compare-and-set on ``revoked_at IS NULL``); its inbox sessions end too.

    Raises:
        NotFound: no live key has that id.
    """
    from approvals.errors import NotFound

    with session_scope() as s:
        result = s.execute(
            update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
        assert isinstance(result, CursorResult)
        if result.rowcount != 1:
            raise NotFound(f"no live API key has id {key_id!r}")


def _key_principal(row: ApiKey | None) -> Principal:
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("the API key is unknown or revoked")
    return Principal(actor=row.actor, scopes=frozenset(Scope(x) for x in row.scopes), via="key", key_id=row.id)


def authenticate(credential: str) -> Principal:
    """Return the principal of an ``Authorization: Bearer`` credential (an API key or an approval token).

    Raises:
        Unauthenticated: unknown or revoked key, or not a credential at all.
        LinkInvalid: an approval token that was altered or has expired.
    """
    if credential.startswith(KEY_PREFIX):
        with session_scope() as s:
            return _key_principal(s.scalar(select(ApiKey).where(ApiKey.key_hash == _hash(credential))))
    if credential.startswith("hat."):
        claims = verify("hat", credential)
        return Principal(
            actor=claims["u"],
            scopes=frozenset({Scope.READ, Scope.DECIDE}),
            via="token",
            approval_id=claims["a"],
            claims=claims,
        )
    raise Unauthenticated("the credential is neither an API key (hk_...) nor an approval token (hat....)")


# ---------------------------------------------------------------- signed tokens


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(body: str) -> str:
    return _b64(hmac.new(get_settings().secret(), body.encode(), hashlib.sha256).digest())


def sign(kind: TokenKind, claims: dict[str, Any], ttl: float) -> str:
    """Return a token of ``kind`` carrying ``claims``, expiring in ``ttl`` seconds, with a fresh nonce."""
    body = f"{kind}.{_b64(json.dumps({**claims, 'e': int(time.time() + ttl), 'n': secrets.token_hex(16)}).encode())}"
    return f"{body}.{_mac(body)}"


def verify(kind: TokenKind, token: str) -> dict[str, Any]:
    """Return the claims of ``token`` if it is a valid, unexpired token of ``kind``.

    Raises:
        LinkInvalid: another kind, malformed, altered (the MAC does not match) or expired.
    """
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != kind:
        raise LinkInvalid("the link or token is malformed")
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_mac(body), parts[2]):
        raise LinkInvalid("the link or token was altered or was made by another server (signature mismatch)")
    try:
        claims: dict[str, Any] = json.loads(_unb64(parts[1]))
    except ValueError:
        raise LinkInvalid("the link or token is malformed") from None
    if claims.get("e", 0) < time.time():
        raise LinkInvalid("the link or token has expired")
    return claims


def _pending_approval(approval_id: str) -> None:
    from approvals.errors import InvalidTransition
    from approvals.status import ApprovalStatus
    from hitl.core.views import get_approval

    status = get_approval(approval_id).status
    if status is not ApprovalStatus.PENDING:
        raise InvalidTransition(f"approval {approval_id} is {status.value}; it takes no more decisions")


def approval_token(approval_id: str, actor: str, ttl: float | None = None) -> str:
    """Return a token that lets ``actor`` read and decide ``approval_id`` only (for embedded approval cards).

    Args:
        ttl: seconds it stays valid; default ``HITL_TOKEN_TTL``.

    Raises:
        ApprovalNotFound, InvalidTransition: the approval is missing or no longer pending.
        InvalidPayload: an empty actor.
    """
    if not actor.strip():
        raise InvalidPayload("a token is made for someone: give the actor")
    _pending_approval(approval_id)
    return sign("hat", {"a": approval_id, "u": actor.strip()}, ttl or get_settings().token_ttl)


def link(approval_id: str, actor: str, action: str = "approve", ttl: float | None = None) -> str:
    """Return a signed one-click link (URL under ``HITL_PUBLIC_URL``) for ``actor`` to ``action`` ``approval_id``.

    Opening it shows the request and one button; the click decides, once (a GET never decides, so mail
    scanners that prefetch links cannot approve anything).

    Args:
        action: ``"approve"`` or ``"reject"``.
        ttl: seconds it stays valid; default ``HITL_LINK_TTL`` (it also stops working at the deadline).

    Raises:
        ApprovalNotFound, InvalidTransition: the approval is missing or no longer pending.
        InvalidPayload: an unknown action or an empty actor.
    """
    if action not in LINK_ACTIONS:
        raise InvalidPayload(f"action must be one of {', '.join(LINK_ACTIONS)}, not {action!r}")
    if not actor.strip():
        raise InvalidPayload("a link is made for someone: give the actor")
    _pending_approval(approval_id)
    token = sign("hlk", {"a": approval_id, "u": actor.strip(), "x": action}, ttl or get_settings().link_ttl)
    return f"{get_settings().public_url.rstrip('/')}/l/{token}"


def link_principal(token: str) -> Principal:
    """Return the principal of a signed link (decide scope on its approval only).

    Raises:
        LinkInvalid: altered, malformed or expired.
    """
    claims = verify("hlk", token)
    return Principal(
        actor=claims["u"],
        scopes=frozenset({Scope.READ, Scope.DECIDE}),
        via="link",
        approval_id=claims["a"],
        claims=claims,
    )


def session_token(principal: Principal) -> str:
    """Return the inbox session cookie value of a key's principal (valid ``HITL_SESSION_TTL`` seconds)."""
    assert principal.key_id is not None
    return sign("hss", {"k": principal.key_id}, get_settings().session_ttl)


def session_principal(token: str) -> Principal:
    """Return the principal of an inbox session cookie; the key it names must still be live.

    Raises:
        LinkInvalid: the cookie was altered or has expired.
        Unauthenticated: its key was revoked.
    """
    claims = verify("hss", token)
    with session_scope() as s:
        p = _key_principal(s.get(ApiKey, claims["k"]))
    return Principal(actor=p.actor, scopes=p.scopes, via="session", key_id=p.key_id, claims=claims)


def csrf_token(session: str) -> str:
    """Return the form token bound to an inbox session (a page's forms must echo it back)."""
    return _mac(f"csrf.{session}")
