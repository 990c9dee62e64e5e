"""The ``tokens create|list|revoke`` commands that ``spoke`` (uplink tokens) and ``spoke-hub``
(operator tokens) both have, written once: each side says where its tokens are kept.

The token is printed once, alone on its line (``--json``: ``{"token": ...}``); only its hash is
kept. ``list`` never shows a token, only its id, name and state.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from appliance.cli import parse_duration, print_json, print_table


class TokenInfo(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    def as_dict(self) -> dict[str, Any]: ...


class TokenBook(Protocol):
    """Where one side keeps its tokens (opened per command, closed after it)."""

    def create(self, name: str, expires_in_s: float | None) -> tuple[TokenInfo, str]: ...

    def all(self) -> Sequence[TokenInfo]: ...

    def revoke(self, name_or_id: str) -> TokenInfo: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TokenCommands:
    help: str
    #: An example for ``--name``: who uses a token.
    example_names: str
    #: Adds the option that says where the tokens are (``--state-dir``, ``--home``).
    add_location: Callable[[argparse.ArgumentParser], None]
    open_book: Callable[[argparse.Namespace], TokenBook]
    #: The ``list`` table's columns, and each row made from a token's ``as_dict()``.
    columns: tuple[str, ...]
    row: Callable[[dict[str, Any]], dict[str, Any]]
    #: Whether ``create`` takes ``--expires``.
    expires: bool = False

    def register(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser("tokens", help=self.help)
        tsub = p.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
        c = tsub.add_parser("create", help="create a token and print it once")
        self.add_location(c)
        c.add_argument("--name", required=True, help=f"who uses it, e.g. {self.example_names}")
        if self.expires:
            c.add_argument("--expires", metavar="DURATION",
                           help="it stops working after this long, e.g. 12h, 30d "
                                "(default: never)")
        c.add_argument("--json", action="store_true")
        c.set_defaults(handler=self.create)
        ls = tsub.add_parser("list", help="list tokens (never the tokens themselves)")
        self.add_location(ls)
        ls.add_argument("--json", action="store_true")
        ls.set_defaults(handler=self.list_tokens)
        r = tsub.add_parser("revoke", help="revoke a token by name or id")
        self.add_location(r)
        r.add_argument("token", metavar="NAME_OR_ID")
        r.add_argument("--json", action="store_true")
        r.set_defaults(handler=self.revoke)

    def create(self, args: argparse.Namespace) -> int:
        expires = args.expires if self.expires else None
        lifetime = parse_duration(expires) if expires else None
        book = self.open_book(args)
        try:
            info, token = book.create(args.name, lifetime)
        finally:
            book.close()
        if args.json:
            print_json({"token": token, **info.as_dict()})
        else:
            print(token)
        return 0

    def list_tokens(self, args: argparse.Namespace) -> int:
        book = self.open_book(args)
        try:
            tokens = [t.as_dict() for t in book.all()]
        finally:
            book.close()
        if args.json:
            print_json(tokens)
        else:
            print_table([self.row(t) for t in tokens], list(self.columns))
        return 0

    def revoke(self, args: argparse.Namespace) -> int:
        book = self.open_book(args)
        try:
            info = book.revoke(args.token)
        finally:
            book.close()
        if args.json:
            print_json(info.as_dict())
        else:
            print(f"token {info.name} ({info.id}) revoked")
        return 0
