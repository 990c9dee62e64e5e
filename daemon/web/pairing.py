"""Pairing a drone app: a deliberate, short window in which the status page shows a token.

The status page is read-only and needs no login, so anyone on the site network can read it.
It must therefore never show a working uplink token by default. Pairing is an explicit act by
someone with a shell on the appliance (``spoke pair``): it creates a fresh uplink token (the
same kind ``spoke tokens create`` makes, under its own name) and leaves an *offer* in
``STATE/uplink/pairing.json`` (mode 0600) that the status page shows, with a QR code, until the
first of:

- the offer expires (``--minutes``, 10 by default, at most 60); the token is then withdrawn
  too, unless the app used it in time (the token store's ``unused_until``);
- the drone app uses the token (an image arrives with that token's name), when the page
  switches to "paired with NAME" and the offer file is deleted;
- ``spoke pair --cancel`` withdraws it (and revokes the token if nothing used it yet).

Outside that window the page shows only the uplink URL (no secret) in its QR code. The token
itself stays stored hashed like every other; only the offer file holds it in clear, briefly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from appliance.fsutil import write_secret

OFFER_FILE = "pairing.json"
DEFAULT_MINUTES = 10.0
MAX_MINUTES = 60.0
SCHEME = "spoke-uplink"


@dataclass(frozen=True)
class Offer:
    name: str
    token: str
    created_at: float
    expires_at: float

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def offer_path(uplink_root: Path) -> Path:
    return uplink_root / OFFER_FILE


def write_offer(
    uplink_root: Path, name: str, token: str, minutes: float, expires_at: float | None = None
) -> Offer:
    """``expires_at``: the end the token itself was given (``unused_until``), so both agree."""
    if not 0 < minutes <= MAX_MINUTES:
        raise ValueError(f"a pairing window is between 0 and {MAX_MINUTES:g} minutes")
    now = time.time()
    offer = Offer(name, token, now, expires_at or now + minutes * 60)
    write_secret(offer_path(uplink_root), json.dumps(offer.__dict__))
    return offer


def read_offer(uplink_root: Path) -> Offer | None:
    """The offer on disk, expired or not; None if there is none or it is unreadable."""
    try:
        data = json.loads(offer_path(uplink_root).read_text())
        return Offer(str(data["name"]), str(data["token"]), float(data["created_at"]),
                     float(data["expires_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_offer(uplink_root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        offer_path(uplink_root).unlink()


def pairing_uri(url: str, offer: Offer | None, fingerprint: str | None = None) -> str:
    """What the QR code carries. Without an offer, just the uplink URL; with one, a
    ``spoke-uplink:`` URI with the URL, the token and (with TLS) the certificate's SHA-256
    so the app can pin a self-signed certificate."""
    if offer is None:
        return url
    params: dict[str, Any] = {"url": url, "token": offer.token, "name": offer.name}
    if fingerprint:
        params["sha256"] = fingerprint
    return f"{SCHEME}://pair?{urlencode(params)}"


def workbench_link(url: str, offer: Offer) -> str:
    """Opens the Review and train workbench signed in with the offered token: an engineer
    scans it with a tablet. The token rides in the fragment, which the browser never sends
    to a server or writes into a log."""
    return f"{url}/workbench#token={offer.token}"


def cert_fingerprint(cert_file: str | None) -> str | None:
    """SHA-256 of the API's TLS certificate (hex), for pinning; None without TLS."""
    if not cert_file:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return None
    return cert.fingerprint(hashes.SHA256()).hex()


@functools.lru_cache(maxsize=8)
def qr_svg_data_uri(text: str) -> str:
    """A QR code of ``text`` as an SVG data URI, made here (segno, pure Python): no network."""
    import segno

    qr = segno.make(text, error="m")
    return str(qr.svg_data_uri(scale=4, border=2, dark="#111", light="#fff"))
