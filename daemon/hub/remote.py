"""Remote commands from the hub: validated, executed, answered on the result topic.

Only the hub may publish on a device's ``cmd/+`` topics (the broker ACL enforces it); every
payload is still validated here before anything runs, and each command checks its arguments.
"""

import io
import json
import logging
import tarfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiomqtt
from pydantic import ValidationError

from appliance import mqtt, topics
from appliance.errors import DataError, LinkError
from appliance.logs import RECENT
from appliance.payloads import CommandRequest, CommandResult

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 16 * 1024
SECRET_MARKERS = ("key", "token", "secret", "password")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def redact(value: Any) -> Any:
    """Config and state with anything that looks like a secret replaced."""
    if isinstance(value, dict):
        return {
            k: "<redacted>" if any(m in k.lower() for m in SECRET_MARKERS) and v else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def no_args(args: dict[str, Any]) -> None:
    if args:
        raise DataError(f"this command takes no arguments (got {', '.join(sorted(args))})")


def tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class RemoteCommands:
    """Dispatches ``cmd/{name}`` messages to registered handlers and publishes results."""

    def __init__(self, publish: Callable[[str, bytes], Awaitable[None]], device_id: str) -> None:
        self.publish = publish
        self.device_id = device_id
        self.handlers: dict[str, Handler] = {}

    async def on_message(self, message: aiomqtt.Message) -> None:
        name = str(message.topic).rsplit("/", 1)[-1]
        raw = message.payload if isinstance(message.payload, bytes) else b""
        try:
            if len(raw) > MAX_COMMAND_BYTES:
                raise DataError(f"command payload over {MAX_COMMAND_BYTES} bytes")
            request = CommandRequest.model_validate_json(raw)
        except (ValidationError, DataError) as exc:
            log.warning("refused a malformed command", extra={"command": name})
            await self._answer(
                name, CommandResult(id="", ok=False, error=f"malformed command: {exc}")
            )
            return
        handler = self.handlers.get(name)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            result = CommandResult(
                id=request.id, ok=False, error=f"unknown command {name!r} (known: {known})"
            )
        else:
            log.info("running remote command", extra={"command": name, "id": request.id})
            try:
                result = CommandResult(id=request.id, ok=True, result=await handler(request.args))
            except (DataError, LinkError) as exc:
                result = CommandResult(id=request.id, ok=False, error=str(exc))
        await self._answer(name, result)

    async def _answer(self, name: str, result: CommandResult) -> None:
        try:
            await self.publish(
                topics.command_result(self.device_id, name), result.model_dump_json().encode()
            )
        except LinkError as exc:
            log.warning("could not answer a command", extra={"command": name, "error": str(exc)})


async def upload_support_bundle(
    url: str, tls: Any, data: bytes, timeout_s: float = 60.0
) -> dict[str, Any]:
    """POST the tarball to the hub over mutual TLS; the hub files it under our device id."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    headers = {"Content-Type": "application/gzip"}
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=data, ssl=tls, headers=headers) as resp,
        ):
            if resp.status != 201:
                detail = (await resp.text())[:200]
                raise LinkError(f"the hub refused the support bundle: HTTP {resp.status} {detail}")
            answer: dict[str, Any] = await resp.json()
            return answer
    except aiohttp.ClientError as exc:
        raise LinkError(f"support bundle upload failed: {exc}") from exc


def support_files(
    config: dict[str, Any],
    status: dict[str, Any],
    identity_meta: dict[str, Any],
    health: list[dict[str, Any]],
    state: dict[str, Any],
) -> dict[str, bytes]:
    return {
        "logs.jsonl": ("\n".join(RECENT.lines) + "\n").encode(),
        "config.json": json.dumps(redact(config), indent=2).encode(),
        "status.json": json.dumps(redact(status), indent=2).encode(),
        "identity.json": json.dumps(redact(identity_meta), indent=2).encode(),
        "health-history.json": json.dumps(health, indent=2).encode(),
        "reported-state.json": json.dumps(state, indent=2, default=str).encode(),
    }


def tls_for(ident: Any) -> Any:
    return mqtt.tls_context(ident.ca, ident.cert, ident.key)
