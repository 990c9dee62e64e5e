"""Certificate renewal without sockets: the hub's rules, the device's schedule and its swap."""

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import ValidationError

from appliance import identity
from appliance.keystore import KeyStore
from appliance.payloads import EnrollRequest, RenewRequest
from daemon.hub import renewal
from daemon.state import StateDir, clean_leftovers, load_identity, save_identity
from provisioning import ca
from provisioning.enrollment import (
    check_server_names,
    decide,
    decide_renewal,
    parse_renewal,
)
from provisioning.registry import DeviceCert, Registry
from tests.provisioning.test_enrollment_rules import TOKEN, claim, device, refusal_code

CA_KEY, CA_CERT = ca.create_ca()


def issued(key: identity.PrivateKey, name: str, days: float = 30) -> x509.Certificate:
    end = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return ca.issue(CA_KEY, CA_CERT, key, name, end)


def held(cert: x509.Certificate, name: str, **over: object) -> DeviceCert:
    base = dict(
        serial=cert.serial_number,
        device_id=name,
        key_sha256="k",
        not_after=identity.cert_not_after(cert),
        issued_at=0.0,
        retired_at=None,
    )
    return DeviceCert(**(base | over))  # type: ignore[arg-type]


def renew_request(cert: x509.Certificate, csr_name: str) -> RenewRequest:
    return RenewRequest(
        certificate=ca.to_pem(cert).decode(),
        csr=identity.build_csr(identity.generate_key(), {}, common_name=csr_name).decode(),
        software_version="t",
    )


@pytest.fixture
def enrolled() -> tuple[str, x509.Certificate]:
    key = identity.generate_key()
    name = identity.device_id_for(key.public_key())
    return name, issued(key, name)


def test_valid_certificate_renews_with_a_new_key_for_the_same_id(
    enrolled: tuple[str, x509.Certificate],
) -> None:
    name, cert = enrolled
    grant = decide_renewal(
        name, renew_request(cert, name), CA_CERT, device(name), held(cert, name), time.time()
    )
    assert grant.device_id == name and identity.csr_common_name(grant.csr) == name


def test_certificate_from_another_ca_cannot_renew(enrolled: tuple[str, x509.Certificate]) -> None:
    name, _ = enrolled
    other_key, other_ca = ca.create_ca("elsewhere")
    foreign = ca.issue(
        other_key, other_ca, identity.generate_key(), name,
        dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    )
    r = renew_request(foreign, name)
    assert refusal_code(
        decide_renewal, name, r, CA_CERT, device(name), held(foreign, name), time.time()
    ) == "bad-certificate"


def test_certificate_of_another_device_cannot_renew_this_one(
    enrolled: tuple[str, x509.Certificate],
) -> None:
    name, cert = enrolled
    r = renew_request(cert, "dev-someone-else")
    assert refusal_code(
        decide_renewal, "dev-someone-else", r, CA_CERT, device("dev-someone-else"),
        held(cert, name), time.time(),
    ) == "name-mismatch"


def test_csr_for_another_id_is_refused(enrolled: tuple[str, x509.Certificate]) -> None:
    name, cert = enrolled
    r = renew_request(cert, "dev-00000000000000000000")
    assert refusal_code(
        decide_renewal, name, r, CA_CERT, device(name), held(cert, name), time.time()
    ) == "name-mismatch"


def test_unknown_device_cannot_renew(enrolled: tuple[str, x509.Certificate]) -> None:
    name, cert = enrolled
    r = renew_request(cert, name)
    assert refusal_code(
        decide_renewal, name, r, CA_CERT, None, held(cert, name), time.time()
    ) == "unknown-device"


def test_revoked_device_cannot_renew(enrolled: tuple[str, x509.Certificate]) -> None:
    name, cert = enrolled
    r = renew_request(cert, name)
    assert refusal_code(
        decide_renewal, name, r, CA_CERT, device(name, revoked_at=1.0), held(cert, name),
        time.time(),
    ) == "device-revoked"


def test_certificate_the_hub_never_issued_to_it_cannot_renew(
    enrolled: tuple[str, x509.Certificate],
) -> None:
    name, cert = enrolled
    r = renew_request(cert, name)
    assert refusal_code(
        decide_renewal, name, r, CA_CERT, device(name), None, time.time()
    ) == "unknown-certificate"


def test_replaced_certificate_cannot_renew_again(enrolled: tuple[str, x509.Certificate]) -> None:
    name, cert = enrolled
    r = renew_request(cert, name)
    assert refusal_code(
        decide_renewal, name, r, CA_CERT, device(name), held(cert, name, retired_at=5.0),
        time.time(),
    ) == "certificate-retired"


def test_expired_certificate_cannot_renew(enrolled: tuple[str, x509.Certificate]) -> None:
    name, cert = enrolled
    r = renew_request(cert, name)
    later = identity.cert_not_after(cert) + 1
    assert refusal_code(
        decide_renewal, name, r, CA_CERT, device(name), held(cert, name), later
    ) == "certificate-expired"


def test_oversized_and_malformed_renewals_are_refused() -> None:
    assert refusal_code(parse_renewal, b"x" * 100, 10) == "too-large"
    assert refusal_code(parse_renewal, b'{"csr": 1}', 1000) == "malformed"


# --- re-enrollment under a renewed key ------------------------------------------------------


def test_expired_device_re_enrolls_under_its_id_with_the_key_the_hub_knows() -> None:
    first = identity.generate_key()
    name = identity.device_id_for(first.public_key())
    renewed_key = identity.generate_key()  # renewal gave it a key its id does not derive from
    r = EnrollRequest(
        claim_id="c1", claim_token=TOKEN, software_version="t",
        csr=identity.build_csr(renewed_key, {}, common_name=name).decode(),
    )
    known = identity.public_key_sha256(renewed_key.public_key())
    grant = decide(r, claim(), device(name), time.time(), known)
    assert grant.device_id == name and grant.reenrollment


def test_a_key_the_hub_does_not_know_cannot_take_an_existing_id() -> None:
    name = identity.device_id_for(identity.generate_key().public_key())
    r = EnrollRequest(
        claim_id="c1", claim_token=TOKEN, software_version="t",
        csr=identity.build_csr(identity.generate_key(), {}, common_name=name).decode(),
    )
    assert refusal_code(decide, r, claim(), device(name), time.time(), "other") == "name-mismatch"


# --- the device's schedule and its atomic swap ---------------------------------------------


def test_renewal_is_due_at_the_configured_share_of_the_lifetime() -> None:
    cert = issued(identity.generate_key(), "dev-x", days=30)
    start = cert.not_valid_before_utc.timestamp()
    life = identity.cert_not_after(cert) - start
    assert identity.renewal_due_at(cert, 2 / 3) == pytest.approx(start + life * 2 / 3)


def write_identity(state: StateDir, key: identity.PrivateKey, name: str, days: float) -> None:
    save_identity(
        state,
        KeyStore(),
        key,
        ca.to_pem(issued(key, name, days)),
        ca.to_pem(CA_CERT),
        {"device_id": name, "labels": {}, "hub_host": "h", "mqtt_port": 1, "http_port": 2},
    )


def test_swap_keeps_the_old_identity_as_previous(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    old = identity.generate_key()
    name = identity.device_id_for(old.public_key())
    write_identity(state, old, name, 30)
    ident = load_identity(state)
    assert ident is not None
    new = renewal.renewal_key(state, ident, new_key=True)
    renewed = renewal.swap_in(state, ident, ca.to_pem(issued(new, name, 60)))
    now = load_identity(state)
    assert now is not None and now.device_id == name
    assert identity.cert_matches_key(now.certificate(), new)
    prev = (state.previous_identity / "device.crt").read_bytes()
    assert str(identity.load_cert(prev).serial_number) == renewed.previous_serial
    assert not state.renewing.exists()


def test_power_loss_between_the_two_renames_restores_the_old_identity(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    key = identity.generate_key()
    name = identity.device_id_for(key.public_key())
    write_identity(state, key, name, 30)
    state.identity.rename(state.previous_identity)  # the first rename happened, not the second
    assert load_identity(state) is None
    clean_leftovers(state)
    ident = load_identity(state)
    assert ident is not None and identity.cert_matches_key(ident.certificate(), key)


def test_answer_for_another_key_is_not_installed(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    key = identity.generate_key()
    name = identity.device_id_for(key.public_key())
    write_identity(state, key, name, 30)
    ident = load_identity(state)
    assert ident is not None
    new = renewal.renewal_key(state, ident, new_key=True)
    wrong = issued(identity.generate_key(), name)
    answer = renewal.parse_answer(
        json.dumps(
            {"status": "accepted", "device_id": name, "certificate": ca.to_pem(wrong).decode(),
             "ca_certificate": ca.to_pem(CA_CERT).decode()}
        ).encode()
    )
    with pytest.raises(identity.IdentityError):
        renewal.check_answer(ident, new, answer)
    assert identity.cert_matches_key(load_identity(state).certificate(), key)  # type: ignore[union-attr]


def test_expired_identity_says_so(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    key = identity.generate_key()
    write_identity(state, key, "dev-x", days=-0.001)
    ident = load_identity(state)
    assert ident is not None and ident.expired() and ident.cert_summary()["expired"]


# --- the registry: what the CRL lists ------------------------------------------------------


def test_crl_lists_replaced_certificates_once_the_new_one_is_proven(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    reg.add_claim("c1", TOKEN, {}, time.time() + 60, 5, 1)
    reg.add_device("dev-a", "c1", {}, {}, 10)
    reg.add_cert("dev-a", 10, "k1", time.time() + 100)
    reg.add_cert("dev-a", 11, "k2", time.time() + 200)
    assert 10 not in reg.revoked_serials()  # still the device's way in until 11 is proven
    assert reg.retire_other_certs("dev-a", 11) == 1
    assert reg.revoked_serials() == [10]
    device_a = reg.device("dev-a")
    assert device_a is not None and device_a.cert_serial == 11


def test_revoking_a_device_revokes_every_unexpired_certificate_it_holds(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "r.db")
    reg.add_claim("c1", TOKEN, {}, time.time() + 60, 5, 1)
    reg.add_device("dev-a", "c1", {}, {}, 9)
    reg.add_cert("dev-a", 9, "k0", time.time() - 1)  # expired: the handshake refuses it anyway
    reg.add_cert("dev-a", 10, "k1", time.time() + 100)
    reg.add_cert("dev-a", 11, "k2", time.time() + 200)
    reg.revoke_device("dev-a")
    assert sorted(reg.revoked_serials()) == [10, 11]


# --- the appliance API's server certificate ------------------------------------------------


def test_a_device_cannot_ask_for_a_server_certificate_naming_the_hub() -> None:
    reserved = {"hub.example.org", "localhost"}
    assert check_server_names(["dev-x", "10.0.0.5"], reserved) == ["dev-x", "10.0.0.5"]
    assert refusal_code(check_server_names, ["Hub.Example.org"], reserved) == "bad-server-name"


def test_server_names_must_be_plain_host_names_or_addresses() -> None:
    with pytest.raises(ValidationError):
        RenewRequest(certificate="c", csr="c", software_version="t", server_names=["a/b"])
    with pytest.raises(ValidationError):
        RenewRequest(certificate="c", csr="c", software_version="t", server_names=["x"] * 17)
    ok = RenewRequest(certificate="c", csr="c", software_version="t",
                      server_names=["box-7", "10.0.0.5", "::1", "fe80::1"])
    assert ok.server_names[-1] == "fe80::1"
