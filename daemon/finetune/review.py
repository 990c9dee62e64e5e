"""What a promoted fine-tune may send to the hub for review, when the site's policy allows it
(``[finetune] upload = "weights"``): the trained head or adapter weights, the candidate's card and
the comparison on the held-out split. Never an image, never a sample path.

It goes over mutual TLS to ``/v1/devices/{id}/finetune-reviews`` on the hub's HTTPS port,
which files it under the device id its certificate names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from appliance.errors import LinkError
from daemon.finetune.jobs import JobOutcome

TIMEOUT_S = 60.0


def review_files(job_dir: Path, result: JobOutcome) -> dict[str, bytes]:
    summary = result.model_dump(mode="json", include={
        "method", "samples", "train", "held_out", "labels", "steps", "train_seconds",
        "comparison", "version", "parent", "promotion"})
    summary["job"] = job_dir.name
    files = {"review.json": json.dumps(summary, indent=2, default=str).encode()}
    if result.trained_weights:
        files["trained.safetensors"] = Path(result.trained_weights).read_bytes()
    if result.candidate:
        files["card.json"] = (Path(result.candidate) / "card.json").read_bytes()
    return files


async def review_upload(ident: Any, job_dir: Path, result: JobOutcome) -> dict[str, Any]:
    from daemon.hub.remote import tarball, tls_for

    files = review_files(job_dir, result)
    url = (f"https://{ident.hub_host}:{ident.http_port}/v1/devices/{ident.device_id}"
           "/finetune-reviews")
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, data=tarball(files), ssl=tls_for(ident),
                         headers={"Content-Type": "application/gzip"}) as resp,
        ):
            if resp.status != 201:
                detail = (await resp.text())[:200]
                raise LinkError(f"the hub refused the review upload: HTTP {resp.status} {detail}")
            answer: dict[str, Any] = await resp.json()
    except aiohttp.ClientError as exc:
        raise LinkError(f"review upload failed: {exc}") from exc
    return {"uploaded": True, "files": sorted(files), **answer}
