"""The uplink's HTTP routes, added to the daemon's one aiohttp app (``daemon/api/server.py``).

Every ``/v1/`` route but the OpenAPI document needs ``Authorization: Bearer <token>``; a
missing or wrong token is answered 401 before anything else is read. Bodies are read in chunks
up to the configured limit plus one byte, so an oversized upload costs at most the limit.
Refusals are JSON ``{"error": code, "reason": text}``; see ``daemon/uplink/openapi.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from appliance.severity import BACKGROUND
from daemon.uplink.openapi import openapi_document
from daemon.uplink.service import CONTENT_TYPES, EXTENSIONS, Metadata, Refused, UplinkService
from daemon.uplink.store import ImageStatus

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
META_FIELDS = ("mission", "drone", "captured_at")
IMAGE_FIELDS = ("image", "file")
MAX_FIELD_BYTES = 256
MAX_PARTS = 8
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
READ_CHUNK = 256 * 1024
CLIENT = web.RequestKey("uplink_client", str)


def error(status: int, code: str, reason: str, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status, headers=headers)


def refusal(exc: Refused) -> web.Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return error(exc.status, exc.code, exc.reason, headers)


class BadRequest(Exception):
    pass


class UplinkApi:
    def __init__(self, service: UplinkService, max_upload_bytes: int) -> None:
        self.service = service
        self.max_upload_bytes = max_upload_bytes

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/readyz", self.readyz)
        r.add_get("/v1/openapi.json", self.openapi)
        r.add_post("/v1/images", self._auth(self.post_image))
        r.add_get("/v1/images", self._auth(self.list_images))
        r.add_get("/v1/images/{id}", self._auth(self.get_image))
        r.add_get("/v1/images/{id}/overlay.png", self._auth(self.get_overlay))
        r.add_get(r"/v1/missions/{mission:[^/]+}.geojson", self._auth(self.mission_geojson))
        r.add_get("/v1/missions/{mission}", self._auth(self.mission_summary))

    # -- auth ----------------------------------------------------------------------------

    def _auth(self, handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            client = None
            if scheme.lower() == "bearer" and token.strip():
                client = self.service.tokens.verify(token.strip())
            if client is None:
                self.service.count_drop("unauthorized")
                reason = "a valid bearer token is required" if header else "no bearer token"
                return error(401, "unauthorized", reason, {"WWW-Authenticate": "Bearer"})
            request[CLIENT] = client
            try:
                return await handler(request)
            except Refused as exc:
                self.service.count_drop(exc.code)
                return refusal(exc)
            except BadRequest as exc:
                return error(400, "bad_request", str(exc))

        return check

    # -- probes and docs -----------------------------------------------------------------

    async def readyz(self, request: web.Request) -> web.Response:
        model = self.service.provider.current() if self.service.ready() else None
        if model is None:
            return web.json_response({"status": "not ready", "reason": "no active model"},
                                     status=503)
        return web.json_response({"status": "ready",
                                  "model": {"name": model.name, "version": model.version,
                                            "backend": model.backend.name},
                                  "queue_depth": self.service.queue_depth()})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    # -- ingestion -----------------------------------------------------------------------

    async def post_image(self, request: web.Request) -> web.Response:
        multipart = request.content_type == "multipart/form-data"
        if not multipart:
            self.service.admit_type(request.content_type)
        with self.service.slot():  # 429 before a byte of the body is read
            if multipart:
                data, content_type, meta = await self._read_multipart(request)
            else:
                content_type = request.content_type
                meta = _metadata(dict(request.query))
                data = await self._read_capped(request.content, request.content_length)
            accepted = await self.service.ingest(data, content_type, meta,
                                                 client=request.get(CLIENT), slot_held=True)
        location = f"/v1/images/{accepted.id}"
        return web.json_response(
            {"id": accepted.id, "status": accepted.status, "location": location,
             "duplicate": not accepted.created},
            status=202, headers={"Location": location})

    async def _read_capped(self, stream: Any, declared: int | None) -> bytes:
        limit = self.max_upload_bytes
        if declared is not None and declared > limit:
            raise Refused(413, "too_large",
                          f"{declared} bytes is more than the {limit}-byte limit")
        buf = bytearray()
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                raise Refused(413, "too_large", f"more than the {limit}-byte limit")

    async def _read_multipart(self, request: web.Request) -> tuple[bytes, str, Metadata]:
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError) as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from exc
        fields: dict[str, str] = {}
        data: bytes | None = None
        content_type = ""
        for _ in range(MAX_PARTS + 1):
            try:
                part = await reader.next()
            except (HttpProcessingError, ValueError, AssertionError) as exc:
                raise BadRequest(f"malformed multipart body: {exc}") from exc
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            if part.name in META_FIELDS:
                raw = await _read_part(part, MAX_FIELD_BYTES)
                if raw is None:
                    raise BadRequest(f"field {part.name!r} is longer than {MAX_FIELD_BYTES} "
                                     "bytes")
                fields[part.name] = raw.decode("utf-8", "replace")
            elif part.name in IMAGE_FIELDS:
                if data is not None:
                    raise BadRequest("one image per request")
                content_type = (part.headers.get("Content-Type") or "").split(";")[0].strip()
                if content_type not in CONTENT_TYPES and part.filename:
                    suffix = "." + part.filename.rsplit(".", 1)[-1].lower()
                    content_type = EXTENSIONS.get(suffix, content_type)
                self.service.admit_type(content_type.lower())
                content_type = content_type.lower()
                got = await _read_part(part, self.max_upload_bytes)
                if got is None:
                    raise Refused(413, "too_large",
                                  f"more than the {self.max_upload_bytes}-byte limit")
                data = got
            else:
                raise BadRequest(f"unexpected field {part.name!r}; expected image and "
                                 f"optionally {', '.join(META_FIELDS)}")
        else:
            raise BadRequest(f"more than {MAX_PARTS} parts")
        if data is None:
            raise BadRequest("no 'image' part in the multipart body")
        return data, content_type, _metadata(fields)

    # -- results -------------------------------------------------------------------------

    async def _row(self, request: web.Request) -> dict[str, Any] | web.Response:
        image_id = request.match_info["id"]
        if not IMAGE_ID.match(image_id):
            return error(404, "not_found", "an image id is the sha256 of its bytes, 64 hex")
        row = await self.service.query("get", image_id)
        if row is None:
            return error(404, "not_found", f"no image {image_id}")
        return row

    async def get_image(self, request: web.Request) -> web.Response:
        row = await self._row(request)
        if isinstance(row, web.Response):
            return row
        return web.json_response(image_view(row, full=True))

    async def get_overlay(self, request: web.Request) -> web.Response:
        row = await self._row(request)
        if isinstance(row, web.Response):
            return row
        if row["status"] != ImageStatus.DONE:
            return error(409, "not_done", f"the image is {row['status']}; no overlay yet")
        png = await self.service.overlay(row)
        if png is None:
            return error(410, "image_deleted", "the stored image was removed by retention; "
                         "its results remain")
        return web.Response(body=png, content_type="image/png")

    async def list_images(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit", DEFAULT_LIMIT))
        except ValueError as exc:
            raise BadRequest("limit must be an integer") from exc
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}")
        since = _parse_since(q["since"]) if "since" in q else None
        status = q.get("status")
        if status is not None and status not in set(ImageStatus):
            raise BadRequest(f"status must be one of {', '.join(ImageStatus)}")
        try:
            rows, cursor = await self.service.query(
                "page", mission=q.get("mission"), label=q.get("label"), since=since,
                status=status, limit=limit, cursor=q.get("cursor"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"invalid cursor: {exc}") from exc
        return web.json_response({"items": [image_view(r, full=False) for r in rows],
                                  "next_cursor": cursor})

    async def mission_summary(self, request: web.Request) -> web.Response:
        mission = request.match_info["mission"]
        rows = await self.service.query("mission", mission)
        if not rows:
            return error(404, "not_found", f"no images for mission {mission!r}")
        return web.json_response(mission_view(mission, rows))

    async def mission_geojson(self, request: web.Request) -> web.Response:
        mission = request.match_info["mission"]
        rows = await self.service.query("mission", mission)
        if not rows:
            return error(404, "not_found", f"no images for mission {mission!r}")
        return web.Response(text=json.dumps(geojson(mission, rows)),
                            content_type="application/geo+json")


async def _read_part(part: BodyPartReader, limit: int) -> bytes | None:
    buf = bytearray()
    while True:
        try:
            chunk = await part.read_chunk(READ_CHUNK)
        except (HttpProcessingError, ValueError, AssertionError) as exc:
            raise BadRequest(f"malformed multipart part: {exc}") from exc
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            return None


def _metadata(fields: dict[str, str]) -> Metadata:
    for key in ("mission", "drone"):
        value = fields.get(key)
        if value is not None and not NAME.match(value):
            raise BadRequest(f"{key} must be 1-128 letters, digits or . _ : - (got {value!r})")
    captured = fields.get("captured_at")
    if captured is not None:
        try:
            captured = datetime.fromisoformat(captured).isoformat()
        except ValueError as exc:
            raise BadRequest(f"captured_at must be an ISO 8601 time, not {captured!r}") from exc
    return Metadata(fields.get("mission"), fields.get("drone"), captured)


def _parse_since(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest("since must be unix seconds or an ISO 8601 time") from exc
    if stamp.tzinfo is None:
        raise BadRequest("since needs a time zone (e.g. 2026-05-01T10:00:00Z)")
    return stamp.timestamp()


def _gps(row: dict[str, Any]) -> dict[str, Any] | None:
    if row.get("latitude") is None:
        return None
    return {"latitude": row["latitude"], "longitude": row["longitude"],
            "altitude": row["altitude"]}


def image_view(row: dict[str, Any], full: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row["id"], "status": row["status"], "reason": row["reason"],
        "source": row["source"], "mission": row["mission"], "drone": row["drone"],
        "captured_at": row["captured_at"], "received_at": row["received_at"],
        "started_at": row["started_at"], "finished_at": row["finished_at"],
        "image": {"content_type": row["content_type"], "format": row["format"],
                  "width": row["width"], "height": row["height"], "bytes": row["bytes"],
                  "stored": bool(row["stored"])},
        "gps": _gps(row), "labels": row["labels"], "probs": row["probs"],
        "model": None if row["model_name"] is None else {
            "name": row["model_name"], "version": row["model_version"],
            "backend": row["backend"]},
        "location": f"/v1/images/{row['id']}",
    }
    if full:
        view["tiles"] = row["tiles"]
        view["timings"] = row["timings"]
        view["warnings"] = row["warnings"] or []
        view["overlay"] = f"/v1/images/{row['id']}/overlay.png"
    return view


def _defects(row: dict[str, Any]) -> list[str]:
    return [lab for lab in (row["labels"] or []) if lab != BACKGROUND]


def mission_view(mission: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    status = {s.value: 0 for s in ImageStatus}
    counts: dict[str, int] = {}
    defects = []
    for row in rows:
        status[row["status"]] += 1
        if row["status"] != ImageStatus.DONE:
            continue
        for lab in row["labels"] or []:
            counts[lab] = counts.get(lab, 0) + 1
        found = _defects(row)
        if found:
            defects.append({"image": row["id"], "labels": found,
                            "max_probs": {lab: row["probs"][lab] for lab in found},
                            "gps": _gps(row), "captured_at": row["captured_at"]})
    return {"mission": mission, "images": len(rows), "processed": status[ImageStatus.DONE],
            "status": status, "label_counts": counts, "defects": defects}


def geojson(mission: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    features = []
    for row in rows:
        found = _defects(row) if row["status"] == ImageStatus.DONE else []
        gps = _gps(row)
        if not found or gps is None:
            continue
        coords = [gps["longitude"], gps["latitude"]]
        if gps["altitude"] is not None:
            coords.append(gps["altitude"])
        features.append({
            "type": "Feature",
            "id": row["id"],
            "geometry": {"type": "Point", "coordinates": coords},
            "properties": {"image": row["id"], "mission": mission, "drone": row["drone"],
                           "labels": found,
                           "max_probs": {lab: row["probs"][lab] for lab in found},
                           "captured_at": row["captured_at"],
                           "model": f"{row['model_name']}@{row['model_version']}"},
        })
    return {"type": "FeatureCollection", "features": features}
