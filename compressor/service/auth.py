"""Bearer tokens: created by `compress serve token create NAME [--admin]`, printed once, stored as sha256.

Every API call but the health check carries `Authorization: Bearer <token>`; the web pages take the same token
once on /login and keep it in an HttpOnly, SameSite=Strict cookie. A token sees and cancels only its own jobs
unless it is an admin's. Tokens are 32 random bytes, so a plain sha256 (not a slow password hash) is enough to
make the stored form useless to whoever reads the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from compressor.core.errors import UserError
from compressor.service.store import Store, Token

PREFIX = "cmp_"
COOKIE = "compressor_token"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's row id, its name and whether it is an admin's."""

    id: int
    name: str
    admin: bool

    def may_see(self, owner_id: int) -> bool:
        return self.admin or owner_id == self.id


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, name: str, admin: bool = False, max_queued: int | None = None,
                 max_upload_bytes: int | None = None) -> str:
    """A new token for NAME (returned once; only its hash is kept), with its own quotas if given (None: the
    server's). A name already taken is a UserError."""
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,100}", name):
        raise UserError(f"token name {name!r}: letters, digits and _ . @ - only, at most 100")
    token = PREFIX + secrets.token_urlsafe(32)
    with store.session() as s:
        if s.scalar(select(Token).where(Token.name == name)) is not None:
            raise UserError(f"token name {name!r} is taken; choose another")
        s.add(Token(name=name, token_hash=digest(token), admin=admin, max_queued=max_queued,
                    max_upload_bytes=max_upload_bytes))
    return token


def token_count(store: Store) -> int:
    with store.session() as s:
        return len(list(s.scalars(select(Token.id))))


def caller_for(store: Store, token: str | None) -> Caller | None:
    """The caller a presented token belongs to, or None."""
    if not token or not token.startswith(PREFIX) or len(token) > 200:
        return None
    wanted = digest(token)
    with store.session() as s:
        row = s.scalar(select(Token).where(Token.token_hash == wanted))
        if row is None or not hmac.compare_digest(row.token_hash, wanted):
            return None
        return Caller(row.id, row.name, row.admin)


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
