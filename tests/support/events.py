"""What a service told the hub through its ``emit`` (the daemon's outbox.put), kept in memory
for assertions: the delivery and fine-tune harnesses share it."""

from __future__ import annotations

from typing import Any


class Events(list[tuple[str, dict[str, Any]]]):
    """``(kind, data)`` pairs in the order they were emitted."""

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        self.append((kind, data))

    def kinds(self) -> list[str]:
        return [k for k, _ in self]

    def last(self, kind: str) -> dict[str, Any]:
        found = [d for k, d in self if k == kind]
        assert found, f"no {kind} event in {self.kinds()}"
        return found[-1]
