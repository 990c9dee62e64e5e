"""Signed, short-lived URLs: how an authenticated page hands out links to device data.

The status page needs no login, so what it links to must not be open either. When the page is
fetched with a credential (an API token, or the browser session that presents one), its
thumbnail links carry ``exp`` and ``sig`` (HMAC-SHA256 of the path and the expiry under a
secret that lives only in this process), so an ``<img>`` can load them without a header; the
link stops working after ``ttl_s`` and on every daemon restart.
"""

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlencode

DEFAULT_TTL_S = 300.0


class UrlSigner:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, secret: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, path: str, exp: int) -> str:
        return hmac.new(self._secret, f"{path}\n{exp}".encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str, now: float | None = None) -> str:
        exp = int((time.time() if now is None else now) + self.ttl_s)
        return f"{path}?{urlencode({'exp': exp, 'sig': self._mac(path, exp)})}"

    def valid(self, path: str, exp: str | None, sig: str | None, now: float | None = None) -> bool:
        """True for an unexpired link this signer made for exactly ``path``."""
        if not exp or not sig or not exp.isdigit() or len(sig) != 64:
            return False
        if int(exp) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._mac(path, int(exp)), sig)
