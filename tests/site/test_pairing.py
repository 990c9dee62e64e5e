"""What the pairing QR code carries: the URL alone, or URL, token, name and the TLS pin."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon.web import pairing


def self_signed(path: Path) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spoke-appliance")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_without_an_offer_the_code_is_only_the_url() -> None:
    assert pairing.pairing_uri("http://10.0.0.5:8443", None) == "http://10.0.0.5:8443"


def test_an_offer_carries_url_token_name_and_certificate_pin(tmp_path: Path) -> None:
    cert = self_signed(tmp_path / "api.crt")
    pin = pairing.cert_fingerprint(str(tmp_path / "api.crt"))
    assert pin == cert.fingerprint(hashes.SHA256()).hex()
    offer = pairing.Offer("tablet", "spk_abc", 0.0, 60.0)
    uri = urlsplit(pairing.pairing_uri("https://10.0.0.5:8443", offer, pin))
    assert (uri.scheme, uri.netloc) == ("spoke-uplink", "pair")
    assert parse_qs(uri.query) == {"url": ["https://10.0.0.5:8443"], "token": ["spk_abc"],
                                   "name": ["tablet"], "sha256": [pin]}


def test_offer_file_is_private_and_windows_are_bounded(tmp_path: Path) -> None:
    offer = pairing.write_offer(tmp_path, "tablet", "spk_abc", minutes=10)
    assert (tmp_path / pairing.OFFER_FILE).stat().st_mode & 0o077 == 0
    assert offer.expires_at - offer.created_at == 600
    assert offer.expired(offer.expires_at) and not offer.expired(offer.created_at)
    for minutes in (0, -1, 61):
        try:
            pairing.write_offer(tmp_path, "x", "spk_x", minutes)
        except ValueError:
            continue
        raise AssertionError(f"{minutes} min accepted")


def test_qr_code_is_an_inline_svg() -> None:
    uri = pairing.qr_svg_data_uri("http://10.0.0.5:8443")
    assert uri.startswith("data:image/svg+xml")


def pair_offer(tmp_path: Path, minutes: str) -> pairing.Offer:
    from daemon.cli import main

    assert main(["pair", "--state-dir", str(tmp_path), "--minutes", minutes, "--json"]) == 0
    offer = pairing.read_offer(tmp_path / "uplink")
    assert offer is not None
    return offer


def test_an_offered_token_is_withdrawn_when_the_offer_expires_unused(tmp_path: Path) -> None:
    from daemon.uplink.tokens import TokenStore

    offer = pair_offer(tmp_path, "0.005")  # 0.3 s
    time.sleep(0.4)
    store = TokenStore(tmp_path / "uplink" / "tokens.db")
    assert store.verify(offer.token) is None


def test_an_offered_token_used_in_time_outlives_the_offer(tmp_path: Path) -> None:
    from daemon.uplink.tokens import TokenStore

    offer = pair_offer(tmp_path, "0.005")
    store = TokenStore(tmp_path / "uplink" / "tokens.db")
    assert store.verify(offer.token) == offer.name
    time.sleep(0.4)
    assert store.verify(offer.token) == offer.name
