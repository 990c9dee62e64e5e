"""Device keys sealed by a TPM, against real software TPMs (swtpm on loopback, one per "box").

The first tests drive the key store alone; the slow ones run a real hub, its mosquitto
(mutual TLS) and the daemon with ``[hub] key_store = "tpm"``.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import identity, keystore, tpm
from appliance.errors import IdentityError
from appliance.keystore import KeyStore
from tests.support import swtpm
from tests.support.fleet import Appliance, Hub, cli, free_port, wait_for

pytestmark = pytest.mark.skipif(
    bool(swtpm.missing()),
    reason=f"needs swtpm and tpm2-tools ({', '.join(swtpm.missing())} missing; "
    "scripts/setup.sh installs them)",
)


@pytest.fixture
def box_a(tmp_path: Path) -> Iterator[swtpm.SoftTpm]:
    with swtpm.running(tmp_path / "tpm-a") as t:
        yield t


@pytest.fixture
def box_b(tmp_path: Path) -> Iterator[swtpm.SoftTpm]:
    with swtpm.running(tmp_path / "tpm-b") as t:
        yield t


def secrets_of(key: identity.PrivateKey) -> list[bytes]:
    """Every form the clear key could take in a file: PEM body, DER, raw scalar, its base64."""
    pem = identity.key_to_pem(key)
    body = b"".join(pem.splitlines()[1:-1])
    der = base64.b64decode(body)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return [body, der, scalar, base64.b64encode(scalar)]


def files_holding(root: Path, needles: list[bytes]) -> list[Path]:
    found = []
    for p in root.rglob("*"):
        try:
            data = p.read_bytes() if p.is_file() else b""
        except FileNotFoundError:  # a running daemon's temp file, renamed meanwhile
            continue
        if any(n in data for n in needles):
            found.append(p)
    return found


def test_a_sealed_key_is_never_on_disk_in_the_clear(tmp_path: Path, box_a: swtpm.SoftTpm) -> None:
    store = KeyStore("tpm", box_a.tcti)
    key = identity.generate_key()
    store.save(tmp_path / "identity", key)
    assert sorted(p.name for p in (tmp_path / "identity").iterdir()) == [keystore.SEALED_NAME]
    assert (tmp_path / "identity" / keystore.SEALED_NAME).stat().st_mode & 0o777 == 0o600
    assert files_holding(tmp_path / "identity", secrets_of(key)) == []
    opened = store.load(tmp_path / "identity")
    assert identity.public_key_sha256(opened.public_key()) == identity.public_key_sha256(
        key.public_key()
    )


def test_a_sealed_key_reaches_tls_through_memory_not_a_file(
    tmp_path: Path, box_a: swtpm.SoftTpm
) -> None:
    store = KeyStore("tpm", box_a.tcti)
    key = identity.generate_key()
    store.save(tmp_path, key)
    path = store.tls_path(tmp_path)
    assert str(path).startswith("/proc/self/fd/")
    assert "memfd:" in str(path.readlink())
    assert identity.load_private_key(path.read_bytes()).private_numbers() == key.private_numbers()


def test_a_sealed_key_does_not_open_in_another_tpm(
    tmp_path: Path, box_a: swtpm.SoftTpm, box_b: swtpm.SoftTpm
) -> None:
    KeyStore("tpm", box_a.tcti).save(tmp_path, identity.generate_key())
    with pytest.raises(IdentityError, match="sealed by another TPM"):
        KeyStore("tpm", box_b.tcti).load(tmp_path)


def test_a_tpm_whose_transient_slots_another_process_filled_still_seals(
    tmp_path: Path, box_a: swtpm.SoftTpm
) -> None:
    """Straight on a TPM with no resource manager, another process's objects stay loaded."""
    env = {**os.environ, "TPM2TOOLS_TCTI": box_a.tcti}
    for n in range(3):
        subprocess.run(["tpm2_createprimary", "-Q", "-C", "o", "-c", f"p{n}.ctx"],
                       cwd=tmp_path, env=env, check=True)
    handles = subprocess.run(["tpm2_getcap", "handles-transient"], env=env, check=True,
                             capture_output=True, text=True).stdout
    assert handles.count("0x80") == 3  # full
    store = KeyStore("tpm", box_a.tcti)
    key = identity.generate_key()
    store.save(tmp_path / "identity", key)
    assert store.load(tmp_path / "identity").private_numbers() == key.private_numbers()


#: Seals and opens a key three times on the TPM named by argv[1]; exits non-zero on any error.
SEAL_AND_OPEN = """
import sys
from pathlib import Path
from appliance import identity
from appliance.keystore import KeyStore
store, folder = KeyStore("tpm", sys.argv[1]), Path(sys.argv[2])
for _ in range(3):
    key = identity.generate_key()
    store.save(folder, key)
    assert store.load(folder).private_numbers() == key.private_numbers()
"""


def test_processes_using_one_tpm_at_once_take_turns(tmp_path: Path, box_a: swtpm.SoftTpm) -> None:
    """With no resource manager one process's flush would drop another's primary ("not
    loaded", as the daemon renewing while ``spoke`` read the key once did in CI)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", SEAL_AND_OPEN, box_a.tcti, str(tmp_path / str(n))],
                         stderr=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors


def test_a_damaged_blob_is_refused_and_left_in_place(tmp_path: Path, box_a: swtpm.SoftTpm) -> None:
    sealed = tmp_path / keystore.SEALED_NAME
    sealed.write_text(json.dumps({"format": "spoke-tpm-sealed-1", "public": "!", "private": ""}))
    with pytest.raises(IdentityError, match="not a TPM-sealed key blob"):
        KeyStore("tpm", box_a.tcti).load(tmp_path)
    assert sealed.exists()


def test_a_new_key_replaces_the_file_key_when_the_store_is_the_tpm(
    tmp_path: Path, box_a: swtpm.SoftTpm
) -> None:
    """A box that gains TPM support moves to a sealed key at its next renewal."""
    KeyStore("file").save(tmp_path, identity.generate_key())
    assert keystore.kind_in(tmp_path) == "file"
    KeyStore("tpm", box_a.tcti).save(tmp_path, identity.generate_key())
    assert keystore.kind_in(tmp_path) == "tpm"
    assert not (tmp_path / keystore.FILE_NAME).exists()


def test_a_tpm_store_without_tpm2_tools_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(IdentityError, match="needs tpm2-tools"):
        keystore.choose("tpm", "")
    assert keystore.choose("auto", "").kind == "file"


def test_auto_picks_the_tpm_when_one_is_named(box_a: swtpm.SoftTpm) -> None:
    assert keystore.choose("auto", box_a.tcti) == KeyStore("tpm", box_a.tcti)
    assert keystore.choose("file", box_a.tcti).kind == "file"
    assert tpm.present(box_a.tcti)


def test_auto_keeps_a_file_key_when_the_tpm_does_not_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    silent = f"swtpm:host=127.0.0.1,port={free_port()}"
    assert keystore.choose("auto", silent).kind == "file"
    assert "TPM present but not usable" in caplog.text


# --- a real appliance, hub and broker ---------------------------------------------------------

SHORT = {"SPOKE_HUB_ENROLLMENT__DEVICE_CERT_DAYS": "0.0012"}  # 104 s (see test_renewal.py)
RENEW_SOON = {"SPOKE_HUB__RENEW_AT_SHARE": "0.85", "SPOKE_HUB__RENEW_RETRY_S": "2"}


def on_tpm(t: swtpm.SoftTpm) -> dict[str, str]:
    return {"SPOKE_HUB__KEY_STORE": "tpm", "SPOKE_HUB__TPM_DEVICE": t.tcti}


@pytest.fixture
def short_hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path).start(env=SHORT)
    yield h
    h.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_enrolls_connects_and_renews_with_a_tpm_sealed_key(
    short_hub: Hub, tmp_path: Path, box_a: swtpm.SoftTpm
) -> None:
    hub = short_hub
    appliance = Appliance(tmp_path, hub)
    try:
        appliance.start(hub.bundle(tmp_path / "site.spoke"), env=on_tpm(box_a) | RENEW_SOON)
        device_id = appliance.wait_enrolled(180)
        # Connected over mutual TLS with the unsealed key: the broker saw this device's cert.
        wait_for(lambda: appliance.status()["hub"]["connected"], 60, "the hub link")
        ident = appliance.state_dir / "identity"
        assert keystore.kind_in(ident) == "tpm"
        key = KeyStore("tpm", box_a.tcti).load(ident)
        first = identity.load_cert((ident / "device.crt").read_bytes())
        assert identity.cert_matches_key(first, key)
        assert files_holding(appliance.state_dir, secrets_of(key)) == []
        status = json.loads(
            cli("spoke", "status", "--state-dir", str(appliance.state_dir), "--json").stdout
        )
        assert status["certificate"]["key"] == "tpm"
        wait_for(
            lambda: (hub.devices()[device_id].get("state") or {})
            .get("certificate", {}).get("key") == "tpm",
            60, "the hub to see a TPM-held key",
        )
        header, row = cli("spoke-hub", "devices", "--home", str(hub.home)).stdout.splitlines()
        assert row[header.index(" KEY ") + 1:].split()[0] == "tpm"

        # Renewal makes a new key, sealed by the same TPM, and proves it before the swap.
        wait_for(
            lambda: identity.load_cert((ident / "device.crt").read_bytes()).serial_number
            != first.serial_number,
            120, "a renewal",
        )
        renewed = KeyStore("tpm", box_a.tcti).load(ident)
        assert identity.cert_matches_key(
            identity.load_cert((ident / "device.crt").read_bytes()), renewed
        )
        assert renewed.private_numbers() != key.private_numbers()
        assert files_holding(appliance.state_dir, secrets_of(renewed)) == []
        wait_for(
            lambda: (s := appliance.status())["hub"]["connected"]
            and s["certificate"]["serial"] != str(first.serial_number),
            60, "the link back with the renewed certificate",
        )
    finally:
        appliance.kill()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_copied_disk_does_not_connect_from_another_box(
    hub: Hub, tmp_path: Path, box_a: swtpm.SoftTpm, box_b: swtpm.SoftTpm
) -> None:
    original = Appliance(tmp_path, hub, name="original")
    clone = Appliance(tmp_path, hub, name="clone")
    try:
        original.start(hub.bundle(tmp_path / "site.spoke"), env=on_tpm(box_a))
        device_id = original.wait_enrolled(180)
        original.stop()
        shutil.copytree(original.state_dir, clone.state_dir)

        clone.start(env=on_tpm(box_b))  # the same data partition in a box with another TPM
        prov = clone.wait_provisioning("key-unusable", 60)
        assert "sealed by another TPM" in prov["reason"]
        assert not clone.status()["hub"]["connected"]
        text = cli("spoke", "status", "--state-dir", str(clone.state_dir)).stdout
        assert "key-unusable" in text
        hub.wait_availability(device_id, "stopped")
    finally:
        clone.kill()
        original.kill()
