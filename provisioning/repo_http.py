"""The model repository on the hub's HTTPS port, at ``/repository/`` (who may read it is
``provisioning.auth``'s business): files from the public directory, or from the object store
the repository lives in, so appliances keep one URL whichever ``[repository] url`` is set."""

import asyncio
from pathlib import Path

from aiohttp import web

from appliance.config import RepositorySection
from appliance.errors import LinkError
from provisioning import repository

PREFIX = "/repository/"


def install(app: web.Application, root: Path, config: RepositorySection) -> None:
    public = repository.public_dir(root, config)
    if public is not None:
        public.mkdir(parents=True, exist_ok=True)
        app.router.add_static(PREFIX, public)
        return
    store = repository.public_storage(root, config)

    async def from_store(request: web.Request) -> web.Response:
        rel = request.match_info["path"]
        if not repository.safe_key(rel):
            raise web.HTTPNotFound()
        try:
            data = await asyncio.to_thread(store.read, rel)
        except LinkError as exc:
            raise web.HTTPBadGateway(text=str(exc)) from exc
        if data is None:
            raise web.HTTPNotFound()
        kind = "application/json" if rel.endswith(".json") else "application/octet-stream"
        return web.Response(body=data, content_type=kind)

    app.router.add_get(PREFIX + "{path:.+}", from_store)
