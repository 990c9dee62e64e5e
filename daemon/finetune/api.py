"""Fine-tuning routes on the daemon's aiohttp app (same bearer tokens as the uplink).

- ``POST /v1/samples``: a labeled sample, as
  - multipart: ``image`` (file), ``labels`` (comma-separated), optional ``new_label=true``;
  - a raw image body (``Content-Type: image/...``) with ``?labels=a,b&new_label=true``;
  - JSON ``{"image_id": SHA256, "box": [x0, y0, x1, y1], "labels": [...], "new_label": false}``:
    a tile of an image already uploaded through ``POST /v1/images``.
- ``GET /v1/samples[?label=]``, ``DELETE /v1/samples/{id}``;
- ``POST /v1/finetune`` (JSON ``method``, ``budget``, ``epochs``, ``seed``): 202 with the job;
  409 while another job is queued or running; 422 for too few samples, unknown labels...;
- ``GET /v1/finetune``, ``GET /v1/finetune/{job}``, ``GET /v1/finetune/{job}/events``
  (server-sent events: ``progress`` while it runs, then ``end`` with the job), and
  ``POST /v1/finetune/{job}/cancel``;
- ``POST /v1/finetune/{job}/promote`` (JSON ``{"override": true}``): promote a candidate the
  gate kept back, where ``[finetune] allow_manual_promotion`` permits; logged and reported to the
  hub as a manual override (403 ``policy`` where it does not);
- ``GET /v1/models`` (what ``spoke models list --json`` shows) and ``POST /v1/models/activate``
  (JSON ``sha256`` or ``version``): roll back to a stored model through the same activation
  path as a promotion (smoke test, atomic swap, health gate, automatic rollback).

Refusals are JSON ``{"error": code, "reason": text}`` like the uplink's.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web

from appliance.errors import DataError
from daemon.finetune.jobs import FINAL, JobConflict
from daemon.finetune.samples import MAX_SAMPLE_BYTES, SampleError, crop_png
from daemon.finetune.service import FinetuneService, OverrideRefused

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Verify = Callable[[str], str | None]
FetchImage = Callable[[str], Awaitable[bytes | None]]
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
JOB_ID = re.compile(r"^ft-[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/tiff")
MAX_JSON_BYTES = 64 * 1024
SSE_KEEPALIVE_S = 15.0


def error(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status)


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _split_labels(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return [x for x in re.split(r"[,;]", str(value or "")) if x.strip()]


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("id", "status", "options", "progress", "result", "error",
                                "attempts", "cancel", "created_at", "started_at",
                                "finished_at")}


class FinetuneApi:
    def __init__(self, service: FinetuneService, verify: Verify,
                 fetch_image: FetchImage | None = None) -> None:
        self.service = service
        self.verify = verify
        self.fetch_image = fetch_image

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/samples", self._auth(self.post_sample))
        r.add_get("/v1/samples", self._auth(self.list_samples))
        r.add_delete("/v1/samples/{id}", self._auth(self.delete_sample))
        r.add_post("/v1/finetune", self._auth(self.post_job))
        r.add_get("/v1/finetune", self._auth(self.list_jobs))
        r.add_get("/v1/finetune/{job}", self._auth(self.get_job))
        r.add_get("/v1/finetune/{job}/events", self._auth(self.job_events))
        r.add_post("/v1/finetune/{job}/cancel", self._auth(self.cancel_job))
        r.add_post("/v1/finetune/{job}/promote", self._auth(self.promote_job))
        r.add_get("/v1/models", self._auth(self.list_models))
        r.add_post("/v1/models/activate", self._auth(self.activate_model))

    def _auth(self, handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip() or \
                    self.verify(token.strip()) is None:
                return web.json_response(
                    {"error": "unauthorized", "reason": "a valid bearer token is required"},
                    status=401, headers={"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
            except JobConflict as exc:
                return error(409, "job_running", str(exc))
            except SampleError as exc:
                return error(422, exc.code, str(exc))
            except DataError as exc:
                code = "too_few_samples" if type(exc).__name__ == "TooFewSamples" else \
                    getattr(exc, "code", "bad_request")
                return error(422, code, str(exc))

        return check

    # -- samples -------------------------------------------------------------------------

    async def post_sample(self, request: web.Request) -> web.Response:
        svc = self.service
        assert svc.samples is not None
        origin: dict[str, Any] | None = None
        if request.content_type == "multipart/form-data":
            data, fields = await self._multipart(request)
            labels, new_label = _split_labels(fields.get("labels")), _truthy(
                fields.get("new_label"))
        elif request.content_type == "application/json":
            body = await self._json(request)
            image_id = str(body.get("image_id", ""))
            if not IMAGE_ID.match(image_id):
                return error(400, "bad_request", "image_id must be the 64-hex id of an image "
                             "posted to /v1/images")
            if self.fetch_image is None:
                return error(404, "not_found", "this daemon has no uplink image store")
            whole = await self.fetch_image(image_id)
            if whole is None:
                return error(404, "not_found", f"no stored image {image_id} (never uploaded, "
                             "or removed by retention)")
            box = body.get("box")
            if box is None:
                data = whole
            else:
                if not isinstance(box, list):
                    return error(400, "bad_request", "box must be [x0, y0, x1, y1]")
                data = await asyncio.to_thread(crop_png, whole, box)
            origin = {"image_id": image_id, "box": box}
            labels, new_label = _split_labels(body.get("labels")), bool(body.get("new_label"))
        elif request.content_type in IMAGE_TYPES:
            data = await self._read(request.content)
            labels = _split_labels(request.query.get("labels"))
            new_label = _truthy(request.query.get("new_label"))
        else:
            return error(415, "unsupported_type", "send multipart/form-data, application/json "
                         f"or one of {', '.join(IMAGE_TYPES)}")
        known, _ = svc.known_labels()
        added = await svc.db(svc.samples.add, data, labels, known, new_label=new_label,
                             source="api", origin=origin)
        return web.json_response({"sample": added.sample, "created": added.created,
                                  "new_labels": list(added.new_labels)},
                                 status=201 if added.created else 200)

    async def _read(self, stream: Any) -> bytes:
        buf = bytearray()
        while chunk := await stream.read(256 * 1024):
            buf += chunk
            if len(buf) > MAX_SAMPLE_BYTES:
                raise SampleError(f"more than the {MAX_SAMPLE_BYTES}-byte sample limit")
        return bytes(buf)

    async def _json(self, request: web.Request) -> dict[str, Any]:
        raw = await request.content.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise DataError(f"JSON body over {MAX_JSON_BYTES} bytes")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise DataError(f"malformed JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise DataError("the JSON body must be an object")
        return body

    async def _multipart(self, request: web.Request) -> tuple[bytes, dict[str, str]]:
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError) as exc:
            raise DataError(f"malformed multipart body: {exc}") from exc
        data: bytes | None = None
        fields: dict[str, str] = {}
        for _ in range(8):
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise DataError("nested multipart bodies are not accepted")
            if part.name in ("image", "file"):
                data = await self._read(part)
            elif part.name in ("labels", "new_label"):
                fields[part.name] = (await part.read(decode=False))[:4096].decode(
                    "utf-8", "replace")
            else:
                raise DataError(f"unexpected field {part.name!r}; expected image, labels, "
                                "new_label")
        if data is None:
            raise DataError("no 'image' part in the multipart body")
        return data, fields

    async def list_samples(self, request: web.Request) -> web.Response:
        svc = self.service
        assert svc.samples is not None
        rows = await svc.db(svc.samples.rows, request.query.get("label"))
        counts = await svc.db(svc.samples.label_counts)
        known, model = svc.known_labels()
        accepted = await svc.db(svc.samples.accepted_labels)
        return web.json_response({"items": rows, "count": len(rows), "label_counts": counts,
                                  "model": model, "labels": known,
                                  "new_labels": [a for a in accepted if a not in known]})

    async def delete_sample(self, request: web.Request) -> web.Response:
        svc = self.service
        assert svc.samples is not None
        row = await svc.db(svc.samples.find, request.match_info["id"])
        if row is None:
            return error(404, "not_found", f"no sample {request.match_info['id']}")
        await svc.db(svc.samples.remove, row["id"])
        return web.json_response({"removed": row["id"]})

    # -- jobs ----------------------------------------------------------------------------

    async def post_job(self, request: web.Request) -> web.Response:
        body = await self._json(request) if request.can_read_body else {}
        job = await self.service.start_job(body, source="api")
        location = f"/v1/finetune/{job['id']}"
        return web.json_response(job_view(job), status=202, headers={"Location": location})

    async def list_jobs(self, request: web.Request) -> web.Response:
        svc = self.service
        assert svc.jobs is not None
        jobs = await svc.db(svc.jobs.recent, 50)
        return web.json_response({"items": [job_view(j) for j in jobs]})

    async def _job(self, request: web.Request) -> dict[str, Any] | web.Response:
        job_id = request.match_info["job"]
        svc = self.service
        assert svc.jobs is not None
        job = await svc.db(svc.jobs.get, job_id) if JOB_ID.match(job_id) else None
        if job is None:
            return error(404, "not_found", f"no job {job_id}")
        return job

    async def get_job(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        return job if isinstance(job, web.Response) else web.json_response(job_view(job))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        if isinstance(job, web.Response):
            return job
        got = await self.service.cancel(job["id"])
        return web.json_response(job_view(got), status=202)

    async def promote_job(self, request: web.Request) -> web.Response:
        job = await self._job(request)
        if isinstance(job, web.Response):
            return job
        body = await self._json(request)
        if body.get("override") is not True:
            return error(400, "bad_request", 'send {"override": true}: promoting against the '
                         "gate must be asked for explicitly")
        token = request.headers.get("Authorization", "").partition(" ")[2].strip()
        try:
            got = await self.service.promote_anyway(job["id"], self.verify(token) or "?")
        except OverrideRefused as exc:
            return error(exc.status, exc.code, str(exc))
        return web.json_response(job_view(got), status=202)

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        job = await self._job(request)
        if isinstance(job, web.Response):
            return job
        svc = self.service
        queue = svc.feed.subscribe(job["id"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            await _send(response, "progress", job_view(job))
            if job["status"] in FINAL:
                await _send(response, "end", job_view(job))
                return response
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    assert svc.jobs is not None
                    final = await svc.db(svc.jobs.get, job["id"])
                    await _send(response, "end", job_view(final) if final else {})
                    return response
                await _send(response, "progress", item)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        finally:
            svc.feed.unsubscribe(job["id"], queue)


    # -- the model store -------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        from daemon.commands.models import collect

        if self.service.models is None:
            return no_store()
        return web.json_response(await asyncio.to_thread(collect, self.service.models.store))

    async def activate_model(self, request: web.Request) -> web.Response:
        from daemon.delivery.errors import ModelRefused

        models = self.service.models
        if models is None:
            return no_store()
        store = models.store
        body = await self._json(request)
        sha, version = body.get("sha256"), body.get("version")
        meta = store.meta(str(sha)) if isinstance(sha, str) and IMAGE_ID.match(sha) else \
            store.by_version(str(version)) if isinstance(version, str) else None
        if meta is None:
            if sha is None and version is None:
                return error(400, "bad_request", "send {\"sha256\": ...} or {\"version\": ...}")
            have = ", ".join(str(m.get("version")) for m in store.entries()) or "none"
            return error(404, "not_found", f"no stored model {sha or version} (have: {have})")
        if store.current() == meta["sha256"]:
            return error(409, "already_active", f"{meta['name']}@{meta['version']} is the "
                         "active model already")
        try:
            await models.activate_local(meta["sha256"], f"operator: roll back to "
                                        f"{meta['version']} (workbench)")
        except ModelRefused as exc:
            return error(422, exc.code, exc.reason)
        return web.json_response({"model": {"name": meta["name"], "version": meta["version"],
                                            "sha256": meta["sha256"]},
                                  "state": models.reported()}, status=202)


def no_store() -> web.Response:
    return error(404, "no_model_store", "this daemon serves a fixed --model: there is no "
                 "model store to list or roll back")


async def _send(response: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    payload = json.dumps(data, default=str)
    await response.write(f"event: {event}\ndata: {payload}\n\n".encode())
