"""The workbench's routes: the page, signing in and out, the review grid and tile previews."""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from aiohttp import web

from appliance import __version__
from daemon.web.results import Results, thumbnail
from daemon.web.session import COOKIE, SessionStore, Verify, bearer, refusal, set_cookie
from daemon.web.status import PAGE_HEADERS
from daemon.web.workbench import review

if TYPE_CHECKING:
    from daemon.finetune.service import FinetuneService

HERE = Path(__file__).parent
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
PREVIEW_SIDE = 1024
THUMB_SIDE = 320
PREVIEW_CACHE = 32
REVIEW_IMAGES = 20
MAX_TILES = 300
MAX_TOKEN_BODY = 4096
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class WorkbenchSources:
    """What the workbench reads; the fine-tune service is None without local fine-tuning."""

    verify: Verify
    uplink_root: Path | None
    finetune: FinetuneService | None


class Workbench:
    def __init__(self, sources: WorkbenchSources, sessions: SessionStore | None = None) -> None:
        self.sources = sources
        self.sessions = sessions or SessionStore(sources.verify)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
        self._previews: OrderedDict[str, bytes] = OrderedDict()

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.sessions.middleware())
        r = app.router
        r.add_get("/workbench", self.page)
        r.add_post("/workbench/session", self.sign_in)
        r.add_get("/workbench/session", self.whoami)
        r.add_delete("/workbench/session", self.sign_out)
        r.add_get("/workbench/api/context", self._auth(self.context))
        r.add_get("/workbench/api/review", self._auth(self.review))
        r.add_get(r"/workbench/api/images/{id}/{kind:preview|heat}.jpg",
                  self._auth(self.preview))
        r.add_static("/workbench/static/", HERE / "static")

    def _auth(self, handler: Handler) -> Handler:
        """The REST API's rule: a valid bearer token (a session's, via the middleware)."""
        async def check(request: web.Request) -> web.StreamResponse:
            token = bearer(request)
            if token is None or self.sources.verify(token) is None:
                return refusal(401, "unauthorized", "sign in with an API token")
            return await handler(request)

        return check

    # -- the page and the session ------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        html = self.templates.get_template("workbench.html").render(version=__version__)
        return web.Response(text=html, content_type="text/html",
                            headers={**PAGE_HEADERS, "Cache-Control": "no-store"})

    async def sign_in(self, request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_TOKEN_BODY + 1)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip() or len(raw) > MAX_TOKEN_BODY:
            return refusal(400, "bad_request", 'send {"token": "spk_..."}: an API token or '
                           "the one `spoke pair` shows")
        made = self.sessions.create(token.strip())
        if made is None:
            return refusal(401, "unauthorized", "that token is not valid (revoked, expired or "
                           "mistyped); make one with `spoke tokens create` or `spoke pair`")
        sid, session = made
        response = web.json_response({"client": session.client, "csrf": session.csrf})
        set_cookie(response, request, sid, self.sessions.max_s)
        return response

    async def whoami(self, request: web.Request) -> web.Response:
        """Who this browser is signed in as (``client`` null when it is not: not an error,
        the page just shows the sign-in form)."""
        session = self.sessions.get(request.cookies.get(COOKIE, ""))
        if session is None:
            return web.json_response({"client": None, "csrf": None},
                                     headers={"Cache-Control": "no-store"})
        return web.json_response({"client": session.client, "csrf": session.csrf},
                                 headers={"Cache-Control": "no-store"})

    async def sign_out(self, request: web.Request) -> web.Response:
        self.sessions.end(request.cookies.get(COOKIE, ""))
        response = web.json_response({"signed_out": True})
        response.del_cookie(COOKIE, path="/")
        return response

    # -- data for the page -------------------------------------------------------------------

    def _model(self) -> tuple[dict[str, Any] | None, dict[str, float]]:
        svc = self.sources.finetune
        current = svc.provider.current() if svc is not None else None
        if current is None:
            return None, {}
        card = current.artifact.card
        return {"name": card.name, "version": card.version}, dict(card.thresholds)

    async def context(self, request: web.Request) -> web.Response:
        from daemon.finetune.options import METHODS
        from models.finetune.split import MIN_SAMPLES

        svc = self.sources.finetune
        model, thresholds = self._model()
        labels: list[str] = []
        if svc is not None:
            labels = [lab for lab in svc.known_labels()[0] if lab != review.BACKGROUND]
        config = svc.config if svc is not None else None
        return web.json_response({
            "model": model, "labels": labels, "thresholds": thresholds,
            "band": review.DEFAULT_BAND, "min_samples": MIN_SAMPLES, "min_per_label": 2,
            "held_out_fraction": config.held_out_fraction if config else None,
            "methods": list(METHODS), "default_method": "auto",
            "default_budget_s": config.default_budget_s if config else None,
            "finetune": svc is not None,
            "allow_override": bool(config and config.allow_manual_promotion),
        })

    async def review(self, request: web.Request) -> web.Response:
        try:
            filters = review.parse_filters(request.query)
        except ValueError as exc:
            return refusal(400, "bad_request", str(exc))
        root = self.sources.uplink_root
        svc = self.sources.finetune
        mission = request.query.get("mission") or None
        _, thresholds = self._model()
        results = Results(root) if root is not None else None
        missions = await asyncio.to_thread(results.missions) if results else []
        images = await asyncio.to_thread(results.newest_done, mission, REVIEW_IMAGES) \
            if results else []
        samples = []
        if svc is not None and svc.samples is not None:
            samples = await svc.db(svc.samples.rows)
        by_origin = review.reviewed_by_origin(samples)
        tiles = review.tiles_of(images, thresholds, by_origin)
        chosen = review.select(tiles, filters)
        image_keys = {tile.key for tile in tiles}
        added = [{"image_id": s["origin"]["image_id"], "box": s["origin"]["box"],
                  "labels": s["labels"], "sample_id": s["id"]}
                 for key, s in by_origin.items() if key not in image_keys]
        return web.json_response({
            "missions": missions,
            "images": [{"id": i["id"], "mission": i["mission"], "drone": i["drone"],
                        "width": i["width"], "height": i["height"], "labels": i["labels"],
                        "received_at": i["received_at"], "stored": bool(i["stored"])}
                       for i in images],
            "tiles": [t.as_dict() for t in chosen[:MAX_TILES]],
            "matching": len(chosen), "total": len(tiles),
            "added": [a for a in added if a["image_id"] in {i["id"] for i in images}],
        })

    async def preview(self, request: web.Request) -> web.Response:
        """The stored image, shrunk: ``preview`` plain (the grid cuts its tiles from it),
        ``heat`` a small thumbnail under the overlay's heatmap (the image list)."""
        image_id, kind = request.match_info["id"], request.match_info["kind"]
        root = self.sources.uplink_root
        if not IMAGE_ID.match(image_id) or root is None:
            return refusal(404, "not_found", f"no image {image_id}")
        jpeg = self._previews.get(f"{kind}:{image_id}")
        if jpeg is None:
            jpeg = await asyncio.to_thread(_make_preview, Results(root), image_id, kind)
            if jpeg is None:
                return refusal(404, "not_found", f"no stored image {image_id} (never "
                               "uploaded, or removed by retention)")
            self._previews[f"{kind}:{image_id}"] = jpeg
            while len(self._previews) > PREVIEW_CACHE:
                self._previews.popitem(last=False)
        return web.Response(body=jpeg, content_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=3600",
                                     "X-Content-Type-Options": "nosniff"})


def _make_preview(results: Results, image_id: str, kind: str) -> bytes | None:
    row = results.get(image_id)
    data = None if row is None else results.read_image(row)
    if row is None or data is None:
        return None
    if kind == "heat":
        return thumbnail(data, row, side=THUMB_SIDE, heat=True)
    return thumbnail(data, {"width": row["width"], "height": row["height"]},
                     side=PREVIEW_SIDE, quality=85, max_boxes=0)
