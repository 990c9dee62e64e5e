"""The hub's own MQTT identity: its certificate names the topic root, which the broker's ACL
grants the fleet's traffic through a pattern (broker.render_acl)."""

import datetime as dt
from pathlib import Path

from appliance import identity, topics
from provisioning import ca
from provisioning.home import HUB_COMMON_NAME, OWN_CERT_LIFETIME, HubHome, init_home
from provisioning.hub import hub_tls


def test_the_hubs_name_is_the_topic_root(tmp_path: Path) -> None:
    home = HubHome(tmp_path / "hub")
    init_home(home, "hub.example.org", 8883, 8443)
    cert = identity.load_cert(home.hub_cert.read_bytes())
    assert identity.cert_common_name(cert) == HUB_COMMON_NAME == topics.ROOT


def test_a_home_from_before_gets_a_certificate_for_the_new_name_for_the_same_key(
    tmp_path: Path,
) -> None:
    """A home made when the hub was called ``hub``: the first use of its MQTT identity re-issues
    the certificate (same key, same CA), once."""
    home = HubHome(tmp_path / "hub")
    init_home(home, "hub.example.org", 8883, 8443)
    ca_key, ca_cert = home.load_ca()
    key = identity.load_private_key(home.hub_key.read_bytes())
    old = ca.issue(ca_key, ca_cert, key, "hub", dt.datetime.now(dt.UTC) + OWN_CERT_LIFETIME)
    home.hub_cert.write_bytes(ca.to_pem(old))
    hub_tls(home, home.load_config())
    cert = identity.load_cert(home.hub_cert.read_bytes())
    assert identity.cert_common_name(cert) == HUB_COMMON_NAME
    assert cert.public_key() == key.public_key()
    assert cert.issuer == ca_cert.subject
    hub_tls(home, home.load_config())
    assert home.hub_cert.read_bytes() == ca.to_pem(cert)
