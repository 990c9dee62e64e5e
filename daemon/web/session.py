"""Browser sessions for the workbench: a cookie that stands for an API token.

There is one permission model, the API token's. Signing in checks a token exactly as a REST
call would (``verify``); the session then keeps that token in daemon memory only (never on
disk, gone with a restart) and a middleware presents it as ``Authorization: Bearer <token>`` on
requests that carry no Authorization header of their own. Every ``/v1/`` handler therefore
authorises a browser exactly like any other client, and revoking the token ends its sessions at
once.

The cookie is HttpOnly, SameSite=Strict and, over TLS, Secure. Requests that change something
with the cookie must also send ``X-Spoke-CSRF`` with the session's CSRF value (belt and braces
beside SameSite). A session ends after ``idle_s`` without use or ``max_s`` after sign-in.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

COOKIE = "spoke_session"
CSRF_HEADER = "X-Spoke-CSRF"
IDLE_S = 8 * 3600.0
MAX_S = 12 * 3600.0
MAX_SESSIONS = 256
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
GUARDED = ("/v1/", "/workbench/api/")

Verify = Callable[[str], str | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Session:
    token: str
    client: str
    csrf: str
    created_at: float
    used_at: float


def refusal(status: int, code: str, reason: str) -> web.Response:
    """The REST API's error shape."""
    return web.json_response({"error": code, "reason": reason}, status=status)


class SessionStore:
    def __init__(self, verify: Verify, idle_s: float = IDLE_S, max_s: float = MAX_S) -> None:
        self.verify = verify
        self.idle_s = idle_s
        self.max_s = max_s
        self._sessions: dict[str, Session] = {}

    def create(self, token: str) -> tuple[str, Session] | None:
        """A new session for a valid token, or None (the token is not valid now)."""
        client = self.verify(token)
        if client is None:
            return None
        now = time.time()
        self._expire(now)
        while len(self._sessions) >= MAX_SESSIONS:  # the oldest sign-in goes first
            del self._sessions[next(iter(self._sessions))]
        sid = secrets.token_urlsafe(32)
        session = Session(token, client, secrets.token_urlsafe(24), now, now)
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str) -> Session | None:
        """The live session ``sid`` whose token is still valid; touching it keeps it alive."""
        now = time.time()
        session = self._sessions.get(sid)
        if session is None:
            return None
        if now - session.used_at > self.idle_s or now - session.created_at > self.max_s or \
                self.verify(session.token) is None:
            del self._sessions[sid]
            return None
        session.used_at = now
        return session

    def end(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def _expire(self, now: float) -> None:
        for sid in [s for s, v in self._sessions.items()
                    if now - v.used_at > self.idle_s or now - v.created_at > self.max_s]:
            del self._sessions[sid]

    def middleware(self) -> Middleware:
        @web.middleware
        async def session_middleware(request: web.Request, handler: Handler
                                     ) -> web.StreamResponse:
            sid = request.cookies.get(COOKIE)
            if sid is None or "Authorization" in request.headers:
                return await handler(request)
            session = self.get(sid)
            guarded = request.path.startswith(GUARDED)
            if session is None:
                if guarded:
                    return refusal(401, "session_expired", "the session has expired or was "
                                   "ended; sign in again (nothing you saved is lost)")
                return await handler(request)
            if request.method not in SAFE_METHODS and guarded and not hmac.compare_digest(
                    request.headers.get(CSRF_HEADER, ""), session.csrf):
                return refusal(403, "csrf", f"a signed-in browser must send {CSRF_HEADER}")
            headers = request.headers.copy()
            headers["Authorization"] = f"Bearer {session.token}"
            return await handler(request.clone(headers=headers))

        return session_middleware


def set_cookie(response: web.StreamResponse, request: web.Request, sid: str,
               max_age: float) -> None:
    response.set_cookie(COOKIE, sid, max_age=int(max_age), path="/", httponly=True,
                        samesite="Strict", secure=request.secure)


def bearer(request: web.Request) -> str | None:
    """The bearer token a request carries (the middleware has put a session's there)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
