"""Byte-level fuzzing of what parses untrusted uplink input: the image decoder and the
multipart parser (through the real API handler on a real port).

    python -m tests.faults.fuzz_bytes decoder|multipart --seconds 30 [--corpus DIR]

Coverage-guided with atheris (libFuzzer) when it is installed, else hypothesis with the same
targets and time box. The rules each input is held to:

- decoder: ``decode_image`` returns an image or raises an ``ImageError`` naming the rule;
  anything else is a crash;
- multipart: the API answers 202 or a documented 4xx with a JSON error, never a 5xx, within
  the request timeout, and answers /healthz after every input.

It prints one line ``FUZZ target=... engine=... cases=N crashes=0`` and exits 0, or prints the
failing input (hex) and exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BOUNDARY = "fuzzboundary"
ALLOWED = {202, 400, 401, 413, 415, 422, 429, 507}


def seeds() -> list[bytes]:
    """Small valid images in each accepted format."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = []
    for fmt in ("JPEG", "PNG", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt)
        out.append(buf.getvalue())
    return out


def multipart_seed(image: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"mission\"\r\n\r\nm1\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + image + (
            f"\r\n--{BOUNDARY}--\r\n").encode()


def decoder_target() -> Callable[[bytes], None]:
    from models.errors import ImageError
    from models.images import ImageLimits, decode_image

    limits = ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000)

    def one(data: bytes) -> None:
        with contextlib.suppress(ImageError):
            decode_image(data, limits)

    return one


class Multipart:
    """The real uplink app on a loopback port (tests.uplink.test_openapi.LiveUplink)."""

    def __init__(self, root: Path) -> None:
        from models.artifact import write_artifact
        from models.config import tiny_config
        from models.vit import build_model
        from tests.uplink.test_openapi import LiveUplink

        artifact = write_artifact(build_model(tiny_config(), seed=0), root / "tiny",
                                  name="tiny", version="0.1.0")
        self.live = LiveUplink(root / "uplink", artifact).__enter__()

    def close(self) -> None:
        self.live.__exit__(None, None, None)

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.live.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.live.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def __call__(self, data: bytes) -> None:
        status, body = self.request("POST", "/v1/images", data,
                                    f"multipart/form-data; boundary={BOUNDARY}")
        if status not in ALLOWED:
            raise AssertionError(f"answered {status}: {body[:200]!r}")
        if status != 202 and not json.loads(body).get("error"):
            raise AssertionError(f"answered {status} without an error code: {body[:200]!r}")
        if self.request("GET", "/healthz")[0] != 200:
            raise AssertionError("the API stopped answering /healthz")


def run_atheris(target: Callable[[bytes], None], corpus: Path, seconds: int) -> int:
    import atheris

    def one(data: bytes) -> None:
        target(data)

    argv = [sys.argv[0], f"-max_total_time={seconds}", "-max_len=65536", "-rss_limit_mb=4096",
            f"-artifact_prefix={corpus.parent}/",
            "-print_final_stats=1", str(corpus)]
    atheris.Setup(argv, one)
    atheris.Fuzz()  # exits the process: libFuzzer prints "Done N runs"
    return 0


def run_hypothesis(target: Callable[[bytes], None], corpus: Path, seconds: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    known = [p.read_bytes() for p in corpus.iterdir()]
    count = {"n": 0}
    deadline = time.monotonic() + seconds

    def mutate(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(seed)
        for pos, value in edits:
            if out:
                out[pos % len(out)] = value
        return bytes(out)

    data = st.one_of(st.binary(max_size=4096),
                     st.builds(mutate, st.sampled_from(known),
                               st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)),
                                        max_size=16)),
                     st.builds(lambda s, n: s[:n], st.sampled_from(known), st.integers(0, 4096)))

    @settings(max_examples=10**9, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data)
    def fuzz(case: bytes) -> None:
        if time.monotonic() > deadline:
            return
        count["n"] += 1
        target(case)

    fuzz()
    return count["n"]


def _engine(wanted: str) -> str:
    """atheris if asked for or available; its coverage hooks go into Pillow, aiohttp's parsers
    and the project's own code, imported here for the first time."""
    if wanted == "hypothesis":
        return wanted
    try:
        import atheris
    except ImportError:
        if wanted == "atheris":
            raise
        return "hypothesis"
    with atheris.instrument_imports(include=["PIL", "models", "daemon", "aiohttp", "multidict"]):
        import aiohttp.multipart  # noqa: F401
        import PIL.Image  # noqa: F401

        import daemon.uplink.api  # noqa: F401
        import models.images  # noqa: F401
    return "atheris"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=("decoder", "multipart"))
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="spoke-fuzz-"))
    engine = _engine(args.engine)
    corpus = args.corpus or work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    images = seeds()
    for i, seed in enumerate(images if args.target == "decoder" else
                             [multipart_seed(s) for s in images]):
        (corpus / f"seed-{i}").write_bytes(seed)
    server = Multipart(work) if args.target == "multipart" else None
    target = server if server is not None else decoder_target()
    try:
        if engine == "atheris":
            return run_atheris(target, corpus, args.seconds)
        cases = run_hypothesis(target, corpus, args.seconds)
    finally:
        if server is not None and engine != "atheris":
            server.close()
    print(f"FUZZ target={args.target} engine=hypothesis cases={cases} crashes=0")
    return 0


def parse_libfuzzer(output: str) -> int | None:
    """The number of inputs libFuzzer ran ("Done N runs in S second(s)")."""
    found = re.search(r"Done (\d+) runs", output)
    return int(found.group(1)) if found else None


if __name__ == "__main__":
    sys.exit(main())
