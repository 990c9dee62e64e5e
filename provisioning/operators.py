"""Operator tokens: who may use the hub's HTTPS API, dashboard and metrics.

A token is ``spk_`` + 32 random bytes (URL-safe base64), as on the appliance; only its sha256 is
stored, so a copy of the registry does not give access. 256 bits of entropy make a plain hash
enough, and a request is checked with one indexed lookup: a revocation holds from the next
request on, in every hub process, with no restart.
"""

import secrets
import uuid

from appliance.errors import ConfigError
from provisioning.registry import OperatorToken, Registry, token_hash

PREFIX = "spk_"
MAX_TOKEN_CHARS = 128
MAX_NAME_CHARS = 64


digest = token_hash


def create_token(registry: Registry, name: str) -> tuple[OperatorToken, str]:
    """A new token for ``name``; the token itself is returned once and never stored."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"a token name must be 1 to {MAX_NAME_CHARS} characters")
    token = PREFIX + secrets.token_urlsafe(32)
    if not registry.add_operator_token(uuid.uuid4().hex[:12], name, digest(token)):
        raise ConfigError(
            f"a token named {name!r} exists already (revoked ones keep their name); pick another"
        )
    return next(t for t in registry.operator_tokens() if t.name == name), token


def revoke_token(registry: Registry, name_or_id: str) -> OperatorToken:
    revoked = registry.revoke_operator_token(name_or_id)
    if revoked is None:
        raise ConfigError(f"no operator token named {name_or_id!r}; see `spoke-hub tokens list`")
    return revoked


def verify(registry: Registry, token: str) -> OperatorToken | None:
    """The active token ``token`` is, or None (malformed, unknown or revoked)."""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
        return None
    return registry.active_operator(digest(token))
