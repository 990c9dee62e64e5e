"""An in-memory TUF model repository that is itself a fetcher (DESIGN rule 10).

It signs with the hub's own repository code (``provisioning.repository`` over ``MemoryStorage``)
and serves its files to the appliance's reconciler like the hub's HTTPS server would, with
knobs an attacker or a bad network would turn: replace bytes, serve old files, stream forever,
stall, or drop the connection part-way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tuf.api import exceptions

from daemon.delivery.fetch import RangeFetcher
from provisioning import repository as repo_mod
from provisioning.repository import Expiry, MemoryStorage, ModelRepository, new_signer

BASE = "https://hub.test:8443/repository"
CHUNK = 16 * 1024


class SimulatedRepository(RangeFetcher):
    def __init__(
        self, root_keys: int = 1, threshold: int = 1, expiry: Expiry | None = None
    ) -> None:
        self.storage = MemoryStorage()
        self.online = {role: new_signer() for role in repo_mod.ONLINE_ROLES}
        self.root_signers = [new_signer() for _ in range(root_keys)]
        self.repo = ModelRepository(self.storage, dict(self.online), expiry or Expiry())
        self.repo.create(list(self.root_signers), threshold)
        self.base = BASE
        # Attack and fault knobs.
        self.served: dict[str, bytes] = {}  # rel path -> bytes served instead of the real ones
        self.endless: set[str] = set()
        self.chunk_delay_s = 0.0
        self.cut_after: dict[str, int] = {}  # rel path -> drop the connection after N bytes
        self.on_chunk: Callable[[str, int], None] | None = None
        self.requests: list[tuple[str, int]] = []

    @property
    def root(self) -> bytes:
        return self.repo.root_bytes()

    def publish(self, artifact_dir: Path) -> dict[str, object]:
        import hashlib

        from models.artifact import read_card

        card = read_card(artifact_dir)
        card_sha = hashlib.sha256((artifact_dir / "card.json").read_bytes()).hexdigest()
        row, _ = repo_mod.publish(self.repo, artifact_dir, card.name, card.version, card_sha)
        return row

    def target_rel(self, row: dict[str, object]) -> str:
        dirname, _, base = str(row["target"]).rpartition("/")
        return f"targets/{dirname}/{row['sha256']}.{base}"

    def files(self) -> dict[str, bytes]:
        return dict(self.storage.files)

    def open_range(self, url: str, offset: int) -> tuple[int, Iterator[bytes]]:
        if not url.startswith(self.base + "/"):
            raise exceptions.DownloadHTTPError(f"{url}: not this repository", 404)
        rel = url[len(self.base) + 1 :]
        self.requests.append((rel, offset))
        if rel in self.endless:
            return offset, self._forever(rel)
        data = self.served.get(rel, self.storage.read(rel))
        if data is None:
            raise exceptions.DownloadHTTPError(f"{url}: HTTP 404", 404)
        return offset, self._chunks(rel, data, offset)

    def _forever(self, rel: str) -> Iterator[bytes]:
        sent = 0
        while True:
            sent += CHUNK
            if self.on_chunk:
                self.on_chunk(rel, sent)
            self.bytes_received += CHUNK
            yield b"\0" * CHUNK

    def _chunks(self, rel: str, data: bytes, offset: int) -> Iterator[bytes]:
        cut = self.cut_after.get(rel)
        pos = offset
        while pos < len(data):
            if cut is not None and pos >= cut:
                raise exceptions.DownloadError(f"{rel}: connection reset at {pos}")
            end = min(len(data), pos + CHUNK, cut if cut is not None and cut > pos else len(data))
            if self.chunk_delay_s:
                time.sleep(self.chunk_delay_s)
            self.bytes_received += end - pos
            yield data[pos:end]
            pos = end
            if self.on_chunk:
                self.on_chunk(rel, pos)
