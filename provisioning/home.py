"""The hub's home directory: where every key, certificate and database of one hub lives."""

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from appliance import identity, topics
from appliance.config import HubConfig, load_config
from appliance.errors import ConfigError
from appliance.fsutil import atomic_write, write_secret
from provisioning import ca

#: The hub's MQTT username (its certificate's common name) is the topic root, so that one
#: ``pattern read %u/#`` line gives it the fleet's traffic (see broker.render_acl). Hub
#: homes made before session 6 have a certificate for ``hub``; ensure_hub_cert renews it.
HUB_COMMON_NAME = topics.ROOT
ENV_PREFIX = "SPOKE_HUB_"
#: How long the broker's and the hub's own certificates are valid.
OWN_CERT_LIFETIME = dt.timedelta(days=825)


@dataclass(frozen=True)
class HubHome:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "hub.toml"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.root / "ca" / "crl.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "broker" / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "broker" / "server.crt"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def hub_key(self) -> Path:
        return self.root / "hub" / "hub.key"

    @property
    def hub_cert(self) -> Path:
        return self.root / "hub" / "hub.crt"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing" / "bundle.key"

    @property
    def signing_pub(self) -> Path:
        return self.root / "signing" / "bundle.pub"

    @property
    def registry(self) -> Path:
        return self.root / "registry.db"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def repository(self) -> Path:
        """The TUF model repository: ``public/`` is served as plain files, ``keys/`` is not."""
        return self.root / "repository"

    @property
    def offline_keys(self) -> Path:
        """Root keys of the TUF repository: move them off the hub after ``models init``."""
        return self.root / "offline-keys"

    @property
    def policy(self) -> Path:
        """The placement policy last applied with ``spoke-hub policy apply``."""
        return self.root / "policy.toml"

    def exists(self) -> bool:
        return self.config.exists() or self.ca_key.exists()

    def require(self) -> None:
        if not self.config.exists():
            raise ConfigError(
                f"{self.root} is not a hub home; create it with `spoke-hub init --home {self.root}`"
            )

    def load_config(self) -> HubConfig:
        self.require()
        return load_config(HubConfig, self.config, ENV_PREFIX)

    def load_ca(self) -> tuple[identity.PrivateKey, ca.x509.Certificate]:
        return (
            identity.load_private_key(self.ca_key.read_bytes()),
            identity.load_cert(self.ca_cert.read_bytes()),
        )


def init_home(home: HubHome, public_host: str, mqtt_port: int, http_port: int) -> None:
    """Create the CA, the broker's and hub's certificates, the signing key and the config."""
    if home.exists():
        raise ConfigError(
            f"{home.root} already holds a hub; refusing to overwrite "
            "its keys. Use another --home, or delete it on purpose first."
        )
    home.root.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = ca.create_ca()
    write_secret(home.ca_key, identity.key_to_pem(ca_key))
    atomic_write(home.ca_cert, ca.to_pem(ca_cert))
    atomic_write(home.crl, ca.build_crl(ca_key, ca_cert, []))

    far = dt.datetime.now(dt.UTC) + OWN_CERT_LIFETIME
    server_key = identity.generate_key()
    names = sorted({public_host, "localhost", "127.0.0.1"})
    server_cert = ca.issue(ca_key, ca_cert, server_key, public_host, far, server_names=names)
    write_secret(home.server_key, identity.key_to_pem(server_key))
    atomic_write(home.server_cert, ca.to_pem(server_cert))

    hub_key = identity.generate_key()
    write_secret(home.hub_key, identity.key_to_pem(hub_key))
    _issue_hub_cert(home, hub_key)

    signing = identity.generate_signing_key()
    write_secret(home.signing_key, identity.key_to_pem(signing))
    atomic_write(home.signing_pub, identity.signing_public_pem(signing))

    config = {"hub": {"public_host": public_host, "mqtt_port": mqtt_port, "http_port": http_port}}
    HubConfig.model_validate(config)
    # The config is written last: its presence marks a complete home.
    atomic_write(home.config, tomli_w.dumps(config))


def _issue_hub_cert(home: HubHome, hub_key: identity.PrivateKey) -> None:
    ca_key, ca_cert = home.load_ca()
    far = dt.datetime.now(dt.UTC) + OWN_CERT_LIFETIME
    atomic_write(home.hub_cert, ca.to_pem(ca.issue(ca_key, ca_cert, hub_key, HUB_COMMON_NAME, far)))


def ensure_hub_cert(home: HubHome) -> bool:
    """Re-issue the hub's own certificate, for the same key, when its common name is not
    HUB_COMMON_NAME (a home made when the hub was called ``hub``): the broker's ACL grants
    the hub's rights to that name only. True when it was re-issued."""
    cert = identity.load_cert(home.hub_cert.read_bytes())
    if identity.cert_common_name(cert) == HUB_COMMON_NAME:
        return False
    _issue_hub_cert(home, identity.load_private_key(home.hub_key.read_bytes()))
    return True
