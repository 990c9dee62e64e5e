"""The model repository on S3-compatible storage: a real SeaweedFS on loopback; python-tuf
clients (the appliance's own TufClient among them) download from it directly and through the
hub, which serves it only to its own."""

import asyncio
import base64
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from tuf.ngclient import Updater

from appliance import identity
from appliance.bundle import BundlePayload, ClaimCredential, HubAddress, verify_bundle
from appliance.config import RepositorySection
from appliance.errors import BundleError
from appliance.fsutil import file_lock
from daemon.delivery.download import download_target
from daemon.delivery.errors import ModelRefused
from daemon.delivery.fetch import HttpsFetcher, repository_source
from daemon.delivery.tufclient import TufClient
from provisioning import ca, repository
from provisioning.commands.bundle import create_bundle
from provisioning.home import HubHome, init_home
from provisioning.registry import Registry
from provisioning.web import HubWeb
from tests.support import seaweed
from tests.support.fleet import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store() -> Iterator[seaweed.Store]:
    with pytest.MonkeyPatch.context() as env:
        for key, value in seaweed.ACCESS.items():
            env.setenv(key, value)
        with seaweed.seaweedfs() as s:
            yield s


@pytest.fixture
def config(store: seaweed.Store) -> RepositorySection:
    bucket = store.bucket(f"spoke-{uuid.uuid4().hex[:8]}")
    return RepositorySection(url=f"s3://{bucket}/fleet/models", endpoint=store.endpoint)


def objects(store: seaweed.Store, config: RepositorySection) -> dict[str, str]:
    """Every object under the repository's prefix and its ETag (changes when rewritten)."""
    bucket, _, prefix = config.url.removeprefix("s3://").partition("/")
    listed = store.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"].removeprefix(prefix + "/"): o["ETag"] for o in listed.get("Contents", [])}


def artifact(tmp_path: Path, version: str) -> Path:
    folder = tmp_path / f"model-{version}"
    folder.mkdir()
    (folder / "card.json").write_text(f'{{"name": "crack", "version": "{version}"}}')
    (folder / "model.onnx").write_bytes(b"onnx-" + version.encode() * 1000)
    (folder / "weights.safetensors").write_bytes(b"weights-" + version.encode())
    return folder


def publish(root: Path, config: RepositorySection, folder: Path, version: str) -> dict[str, str]:
    with file_lock(root):
        repo = repository.open_repository(root, config)
        row, _ = repository.publish(repo, folder, "crack", version, "0" * 64)
    return row


def test_the_hub_writes_its_repository_into_the_bucket(
    config: RepositorySection, store: seaweed.Store, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    repository.init_repository(root, tmp_path / "offline", config, 1, 1)
    assert {"metadata/1.root.json", "metadata/root.json", "metadata/timestamp.json",
            "metadata/1.snapshot.json", "metadata/1.targets.json"} <= set(objects(store, config))
    assert not (root / "public").exists()
    assert sorted(p.name for p in (root / "keys").iterdir()) == [
        "snapshot.pem", "targets.pem", "timestamp.pem"]


def test_publishing_adds_new_files_and_rewrites_only_the_timestamp(
    config: RepositorySection, store: seaweed.Store, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    repository.init_repository(root, tmp_path / "offline", config, 1, 1)
    publish(root, config, artifact(tmp_path, "1.0.0"), "1.0.0")
    before = objects(store, config)
    publish(root, config, artifact(tmp_path, "1.1.0"), "1.1.0")
    after = objects(store, config)
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {"metadata/timestamp.json"}
    assert {"metadata/3.snapshot.json", "metadata/3.targets.json"} <= set(after) - set(before)


def test_a_tuf_client_downloads_a_model_from_the_store_directly(
    config: RepositorySection, store: seaweed.Store, tmp_path: Path
) -> None:
    """The bucket itself (or a CDN in front of it) can be the repository's URL."""
    root = tmp_path / "repo"
    repository.init_repository(root, tmp_path / "offline", config, 1, 1)
    folder = artifact(tmp_path, "1.0.0")
    row = publish(root, config, folder, "1.0.0")
    base = f"{store.endpoint}/{config.url.removeprefix('s3://')}"
    cache = tmp_path / "client"
    (cache / "metadata").mkdir(parents=True)
    updater = Updater(
        metadata_dir=str(cache / "metadata"),
        metadata_base_url=f"{base}/metadata/",
        target_base_url=f"{base}/targets/",
        target_dir=str(cache),
        bootstrap=repository.root_json(root, config).encode(),  # type: ignore[union-attr]
    )
    updater.refresh()
    info = updater.get_targetinfo(row["target"])
    assert info is not None
    path = updater.download_target(info)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == row["sha256"]
    assert Path(path).read_bytes() == repository.pack_tar(folder)


@pytest.fixture
async def hub_on_s3(
    config: RepositorySection, tmp_path: Path
) -> AsyncIterator[tuple[HubHome, Registry, int]]:
    home = HubHome(tmp_path / "hub")
    init_home(home, "localhost", free_port(), free_port())
    hub_config = home.load_config().model_copy(update={"repository": config})
    registry = Registry(home.registry)
    web = HubWeb(home, hub_config, registry)
    await web.start()
    try:
        yield home, registry, hub_config.hub.http_port
    finally:
        await web.stop()
        registry.close()


async def test_an_appliance_downloads_a_model_through_the_hub_from_the_bucket(
    hub_on_s3: tuple[HubHome, Registry, int], config: RepositorySection, tmp_path: Path
) -> None:
    """The appliance's own TufClient and HttpsFetcher, with its device certificate, against
    the hub's /repository/, which reads the bucket."""
    home, registry, port = hub_on_s3
    await asyncio.to_thread(
        repository.init_repository, home.repository, home.offline_keys, config, 1, 1
    )
    row = await asyncio.to_thread(
        publish, home.repository, config, artifact(tmp_path, "1.0.0"), "1.0.0"
    )
    registry.add_claim("c1", "secret", {}, 2e9, 1, 1)
    registry.add_device("dev-a", "c1", {}, {}, 2)
    cert, key = device_certificate(home, "dev-a", tmp_path)
    client = TufClient(
        tmp_path / "tuf", repository.root_json(home.repository, config).encode(),  # type: ignore[union-attr]
        f"https://localhost:{port}/repository", HttpsFetcher(home.ca_cert, (cert, key)),
    )
    resolved = await asyncio.to_thread(client.resolve, row["target"])
    assert resolved.info.hashes["sha256"] == row["sha256"]
    fetcher = HttpsFetcher(home.ca_cert, (cert, key))
    data = await asyncio.to_thread(lambda: b"".join(fetcher.fetch(resolved.url)))
    assert hashlib.sha256(data).hexdigest() == row["sha256"]


def device_certificate(home: HubHome, device_id: str, tmp_path: Path) -> tuple[Path, Path]:
    ca_key, ca_cert = home.load_ca()
    key = identity.generate_key()
    cert = ca.issue(ca_key, ca_cert, key, device_id, dt.datetime.now(dt.UTC) + dt.timedelta(1))
    (tmp_path / "device.key").write_bytes(identity.key_to_pem(key))
    (tmp_path / "device.crt").write_bytes(ca.to_pem(cert))
    return tmp_path / "device.crt", tmp_path / "device.key"


@pytest.mark.parametrize("rel", ["../keys/timestamp.pem", "/etc/passwd", "metadata/../../x", ""])
def test_only_repository_paths_reach_the_bucket(rel: str) -> None:
    assert not repository.safe_key(rel)


def test_a_repository_url_of_another_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="url"):
        RepositorySection(url="ftp://models.example.org/spoke")


@pytest.fixture
def hub_naming_the_store(
    config: RepositorySection, store: seaweed.Store, tmp_path: Path
) -> tuple[HubHome, str]:
    """A hub whose repository is in the bucket and whose bundles send appliances there."""
    home = HubHome(tmp_path / "hub")
    init_home(home, "localhost", free_port(), free_port())
    public = f"{store.endpoint}/{config.url.removeprefix('s3://')}"
    with home.config.open("a") as f:
        f.write(f'\n[repository]\nurl = "{config.url}"\nendpoint = "{config.endpoint}"\n'
                f'public_url = "{public}"\n')
    return home, public


def store_source(
    home: HubHome, tmp_path: Path
) -> tuple[TufClient, HttpsFetcher, str]:
    """What the daemon builds from a bundle that names the store (daemon/app.py): the URL,
    a fetcher without the device certificate, the TUF root pinned from the bundle."""
    data = create_bundle(home, {"site": "s3"}, 3600, 1)[1]
    payload = verify_bundle(data, identity.load_signing_key(
        home.signing_key.read_bytes()).public_key())
    assert payload.tuf_root is not None and payload.repository_url is not None
    cert, key = device_certificate(home, "dev-a", tmp_path)
    url, fetcher = repository_source(
        "https://localhost:1/repository", home.ca_cert, (cert, key), payload.repository_url, 30
    )
    return TufClient(tmp_path / "tuf", payload.tuf_root.encode(), url, fetcher), fetcher, url


def test_an_appliance_whose_bundle_names_the_store_downloads_from_it(
    hub_naming_the_store: tuple[HubHome, str], tmp_path: Path
) -> None:
    """No hub serves anything here: metadata and the model come from the bucket itself."""
    home, public = hub_naming_the_store
    client, fetcher, url = store_source(home, tmp_path)
    assert url == public
    config = home.load_config().repository
    row = publish(home.repository, config, artifact(tmp_path, "1.0.0"), "1.0.0")
    resolved = client.resolve(row["target"])
    assert resolved.url.startswith(public)
    path = download_target(fetcher, resolved.url, resolved.info, tmp_path / "part", deadline())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]


def test_a_model_altered_in_the_store_is_refused(
    hub_naming_the_store: tuple[HubHome, str], store: seaweed.Store, tmp_path: Path
) -> None:
    home, public = hub_naming_the_store
    client, fetcher, _ = store_source(home, tmp_path)
    config = home.load_config().repository
    row = publish(home.repository, config, artifact(tmp_path, "1.0.0"), "1.0.0")
    resolved = client.resolve(row["target"])
    original = b"".join(fetcher.fetch(resolved.url))
    rewrite(store, public, resolved.url, bytes(b ^ 0xFF for b in original))
    with pytest.raises(ModelRefused) as refused:
        download_target(fetcher, resolved.url, resolved.info, tmp_path / "part", deadline())
    assert refused.value.code == "hash-mismatch"
    assert not (tmp_path / "part").exists()


def test_metadata_altered_in_the_store_is_refused(
    hub_naming_the_store: tuple[HubHome, str], store: seaweed.Store, tmp_path: Path
) -> None:
    home, public = hub_naming_the_store
    client, fetcher, url = store_source(home, tmp_path)
    config = home.load_config().repository
    row = publish(home.repository, config, artifact(tmp_path, "1.0.0"), "1.0.0")
    targets = f"{url}/metadata/2.targets.json"
    signed = json.loads(b"".join(fetcher.fetch(targets)))
    for info in signed["signed"]["targets"].values():
        info["hashes"]["sha256"] = "0" * 64
    rewrite(store, public, targets, json.dumps(signed).encode())
    with pytest.raises(ModelRefused) as refused:
        client.resolve(row["target"])
    assert refused.value.code == "bad-signature"


def deadline() -> float:
    return time.monotonic() + 60


def rewrite(store: seaweed.Store, public: str, url: str, data: bytes) -> None:
    """Overwrite the object behind ``url`` in the bucket, as someone with write access could."""
    bucket, _, key = url.removeprefix(f"{store.endpoint}/").partition("/")
    assert url.startswith(public)
    store.client().put_object(Bucket=bucket, Key=key, Body=data)


@pytest.mark.parametrize("url", ["file:///etc/spoke", "s3://bucket/models", "https://a b/"])
def test_a_public_repository_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        RepositorySection(public_url=url)


def test_a_bundle_naming_a_repository_that_is_not_http_is_refused() -> None:
    """Signed, but the appliance could fetch nothing from it: refused as malformed."""
    key = identity.generate_signing_key()
    payload = BundlePayload(
        hub=HubAddress(host="h", mqtt_port=1, http_port=2), ca_certificate="ca",
        claim=ClaimCredential(id="c", token="t" * 20, certificate="c", key="k"),
        created_at=time.time(), expires_at=time.time() + 60, max_uses=1,
    ).model_dump(mode="json")
    raw = json.dumps(payload | {"repository_url": "file:///etc/spoke"}).encode()
    doc = {"format": "spoke-bundle/1", "key_id": identity.key_fingerprint(key.public_key()),
           "payload": base64.b64encode(raw).decode(), "signature": identity.sign(key, raw)}
    with pytest.raises(BundleError, match="malformed"):
        verify_bundle(json.dumps(doc).encode(), key.public_key())
