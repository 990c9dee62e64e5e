"""Which certificate the appliance's API serves: HTTPS unless plain HTTP is asked for by name.

In order: the files ``[api] tls_cert``/``tls_key`` name; the server certificate the hub's CA
issued at enrollment (``STATE/identity/server.crt``, with the device key, renewed with the
device certificate); or a self-signed one made here for a standalone appliance
(``STATE/api/``). ``[api] plain_http = true`` serves plain HTTP, and the status page says so.
The context is kept, so a renewal or an enrollment swaps the certificate for new connections
without restarting the server.
"""

import datetime as dt
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance import identity, keystore
from appliance.config import ApiSection
from appliance.errors import IdentityError
from appliance.fsutil import atomic_write, write_secret
from appliance.keystore import KeyStore
from daemon.state import StateDir

log = logging.getLogger(__name__)

SELF_SIGNED_DAYS = 825
MAX_NAMES = 16


def served_names(listen_host: str) -> list[str]:
    """The host name and the addresses the API answers on (all of them for a wildcard)."""
    names = [socket.gethostname()]
    if listen_host in ("0.0.0.0", "::", ""):
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    names.append(a.address.split("%")[0])  # no IPv6 zone in a certificate
    else:
        names.append(listen_host)
    unique = list(dict.fromkeys(n for n in names if n))
    return unique[:MAX_NAMES]


def san_values(cert: x509.Certificate) -> set[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    }


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_self_signed(crt: Path, key_path: Path, names: list[str]) -> None:
    key = identity.generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    write_secret(key_path, identity.key_to_pem(key))
    atomic_write(crt, cert.public_bytes(serialization.Encoding.PEM))


class ApiTls:
    def __init__(
        self, config: ApiSection, state: StateDir, listen_host: str, keys: KeyStore | None = None
    ) -> None:
        """``keys``: how the device key is kept (the hub-issued certificate uses it)."""
        self.config = config
        self.state = state
        self.keys = keys or KeyStore()
        self.listen_host = listen_host
        self._ctx: ssl.SSLContext | None = None

    @property
    def enabled(self) -> bool:
        return not self.config.plain_http

    def kind(self) -> str:
        """``plain-http``, ``configured``, ``hub`` or ``self-signed``: what the page says."""
        if not self.enabled:
            return "plain-http"
        if self.config.tls_cert:
            return "configured"
        return "hub" if self._hub_cert() is not None else "self-signed"

    def _hub_cert(self) -> Path | None:
        """The hub-issued certificate, if there is one and a device key beside it."""
        d = self.state.identity
        crt = d / "server.crt"
        return crt if crt.exists() and keystore.kind_in(d) is not None else None

    def files(self) -> tuple[Path, Path] | None:
        """(certificate, key) to serve now; None for plain HTTP."""
        if not self.enabled:
            return None
        if self.config.tls_cert:
            return Path(self.config.tls_cert), Path(self.config.tls_key or self.config.tls_cert)
        crt = self._hub_cert()
        if crt is not None:
            try:
                return crt, self.keys.tls_path(crt.parent)
            except IdentityError as exc:  # e.g. sealed by another TPM: still serve the page
                log.error("device key unusable; serving self-signed", extra={"reason": str(exc)})
        return self._self_signed()

    def _self_signed(self) -> tuple[Path, Path]:
        d = self.state.root / "api"
        crt, key = d / "self-signed.crt", d / "self-signed.key"
        names = served_names(self.listen_host)
        if crt.exists() and key.exists():
            cert = identity.load_cert(crt.read_bytes())
            fresh = identity.cert_not_after(cert) > dt.datetime.now(dt.UTC).timestamp() + 86400
            if fresh and set(names) <= san_values(cert):
                return crt, key
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        make_self_signed(crt, key, names)
        log.info("made a self-signed API certificate", extra={"names": names})
        return crt, key

    def cert_file(self) -> str | None:
        """The certificate served now (for the pairing pin); None for plain HTTP."""
        files = self.files()
        return str(files[0]) if files else None

    def server_names(self) -> list[str]:
        """What to ask the hub to name in the API's certificate; none when it is not used."""
        if not self.enabled or self.config.tls_cert:
            return []
        return served_names(self.listen_host)

    def context(self) -> ssl.SSLContext | None:
        files = self.files()
        if files is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*files)
        self._ctx = ctx
        return ctx

    def reload(self) -> None:
        """After an enrollment or renewal: new connections get the new certificate."""
        files = self.files()
        if self._ctx is not None and files is not None:
            self._ctx.load_cert_chain(*files)
            log.info("api certificate reloaded", extra={"kind": self.kind()})
