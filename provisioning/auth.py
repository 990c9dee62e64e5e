"""Who may use the hub's HTTPS port: operators, and devices for the model repository.

One middleware decides before any handler runs, and it denies by default, so a new route is
protected without a line of its own:

- public: ``/healthz``, the sign-in page and its static assets;
- ``/v1/devices/...`` uploads: the device's own certificate (checked by the handler against
  the path);
- ``/repository/``: a certificate the hub's CA signed for an enrolled, unrevoked device, or an
  operator;
- everything else (dashboard, ``/api/v1/*``, ``/metrics``): an operator, by bearer token or by the
  session cookie that signing in with a token sets.

TLS verifies a presented client certificate against the hub's CA during the handshake, so a
certificate from another CA never reaches this code: the connection is refused before HTTP.
"""

import logging
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from provisioning import operators
from provisioning.registry import OperatorToken, Registry

log = logging.getLogger(__name__)

COOKIE = "__Host-spoke-hub-session"
SESSION_S = 12 * 3600
MAX_LOGIN_BYTES = 4096
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/logout"})
PUBLIC_PREFIXES = ("/static/",)
DEVICE_PREFIXES = ("/v1/devices/",)
REPOSITORY_PREFIX = "/repository/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

REGISTRY = web.AppKey("auth_registry", Registry)
OPERATOR = web.RequestKey("operator", str)


def peer_common_name(request: web.Request) -> str | None:
    """The CN of the client certificate TLS verified against the hub's CA, if one was sent."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def operator_of(request: web.Request) -> str:
    """The name of the operator token behind this request (set by the middleware)."""
    return request[OPERATOR]


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _enrolled_device(request: web.Request, registry: Registry) -> bool:
    name = peer_common_name(request)
    device = registry.device(name) if name else None
    return device is not None and device.revoked_at is None


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def _operator(request: web.Request, registry: Registry) -> OperatorToken | None:
    """By bearer token, else by session cookie (which a foreign page may not use to write)."""
    token = _bearer(request)
    if token is not None:
        return operators.verify(registry, token)
    session = request.cookies.get(COOKIE)
    if not session or len(session) > operators.MAX_TOKEN_CHARS:
        return None
    if request.method not in SAFE_METHODS and not _same_origin(request):
        return None
    return registry.session_operator(operators.digest(session))


def _refuse(request: web.Request, reason: str) -> web.StreamResponse:
    if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPSeeOther("/login")
    return web.json_response({"error": reason}, status=401)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES + DEVICE_PREFIXES):
        return await handler(request)
    registry = request.app[REGISTRY]
    if path.startswith(REPOSITORY_PREFIX) and _enrolled_device(request, registry):
        return await handler(request)
    operator = _operator(request, registry)
    if operator is None:
        what = "an enrolled device's certificate or " if path.startswith(REPOSITORY_PREFIX) else ""
        return _refuse(
            request,
            f"{what}an operator token is required: send `Authorization: Bearer TOKEN` "
            "(create one with `spoke-hub tokens create`) or sign in at /login",
        )
    request[OPERATOR] = operator.name
    return await handler(request)


async def _login_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(Path(__file__).parent / "static" / "login.html")


async def _login(request: web.Request) -> web.StreamResponse:
    """Trade an operator token (form field ``token`` or bearer) for a session cookie."""
    if (request.content_length or 0) > MAX_LOGIN_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_LOGIN_BYTES, request.content_length or 0)
    form = await request.post()
    field = form.get("token")
    token = _bearer(request) or (field.strip() if isinstance(field, str) else "")
    registry = request.app[REGISTRY]
    operator = operators.verify(registry, token)
    if operator is None:
        log.warning("operator sign-in refused", extra={"remote": request.remote})
        return web.json_response(
            {"error": "not an active operator token; create one with `spoke-hub tokens create`"},
            status=401,
        )
    session = secrets.token_urlsafe(32)
    registry.add_operator_session(
        operators.digest(session), operator.id, time.time() + SESSION_S
    )
    log.info("operator signed in", extra={"operator": operator.name, "remote": request.remote})
    response = web.HTTPSeeOther("/")
    response.set_cookie(
        COOKIE, session, max_age=SESSION_S, path="/", secure=True, httponly=True,
        samesite="Strict",
    )
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    session = request.cookies.get(COOKIE)
    if session and _same_origin(request):
        request.app[REGISTRY].end_operator_session(operators.digest(session))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    raise response


def install(app: web.Application, registry: Registry) -> None:
    """Guard every route of ``app`` and add the sign-in routes."""
    app[REGISTRY] = registry
    app.middlewares.append(middleware)
    app.router.add_get("/login", _login_page)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
