"""``spoke-hub bundle create|pubkey|list|revoke``: provisioning bundles and their claims."""

import argparse
import datetime as dt
import secrets
import time
from pathlib import Path
from typing import Any

from appliance import identity
from appliance.bundle import BundlePayload, ClaimCredential, HubAddress, sign_bundle
from appliance.cli import print_json, print_table
from appliance.errors import ConfigError
from appliance.fsutil import write_secret
from provisioning import broker, ca
from provisioning.commands.common import add_home, home_of, parse_duration, parse_labels
from provisioning.home import HubHome
from provisioning.registry import open_registry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="provisioning bundles")
    bsub = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")

    c = bsub.add_parser("create", help="write a signed provisioning bundle")
    add_home(c)
    c.add_argument("--labels", default="", help="site labels, e.g. site=bridge-17,region=north")
    c.add_argument("--expires", default="7d", help="lifetime, e.g. 12h, 7d (default 7d)")
    c.add_argument("--max-uses", type=int, default=5, help="devices it may enroll (default 5)")
    c.add_argument("--out", type=Path, required=True)
    c.set_defaults(handler=create)

    k = bsub.add_parser("pubkey", help="print the public key appliances trust")
    add_home(k)
    k.set_defaults(handler=pubkey)

    ls = bsub.add_parser("list", help="list claims and how many devices each enrolled")
    add_home(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=list_claims)

    r = bsub.add_parser("revoke", help="revoke a bundle's claim: it enrolls no more devices")
    add_home(r)
    r.add_argument("claim_id")
    r.set_defaults(handler=revoke)


def _tuf_root(home: HubHome) -> str | None:
    """The model repository's newest root, which the appliance pins (created on first use)."""
    from provisioning import repository

    config = home.load_config()
    repository.ensure_repository(home.repository, home.offline_keys, config.repository)
    return repository.root_json(home.repository, config.repository)


def create_bundle(
    home: HubHome, labels: dict[str, str], lifetime_s: float, max_uses: int
) -> tuple[str, bytes]:
    """Register a new claim and return (claim id, signed bundle bytes)."""
    if max_uses < 1:
        raise ConfigError("--max-uses must be at least 1")
    config = home.load_config()
    ca_key, ca_cert = home.load_ca()
    claim_id = secrets.token_hex(6)
    token = ca.new_secret()
    expires_at = time.time() + lifetime_s
    claim_key = identity.generate_key()
    claim_cert = ca.issue(
        ca_key,
        ca_cert,
        claim_key,
        f"claim-{claim_id}",
        dt.datetime.fromtimestamp(expires_at, dt.UTC),
    )
    registry = open_registry(home)
    try:
        registry.add_claim(claim_id, token, labels, expires_at, max_uses, claim_cert.serial_number)
        broker.write_access(home, registry)
    finally:
        registry.close()
    payload = BundlePayload(
        hub=HubAddress(
            host=config.hub.public_host,
            mqtt_port=config.hub.mqtt_port,
            http_port=config.hub.http_port,
        ),
        ca_certificate=ca.to_pem(ca_cert).decode(),
        claim=ClaimCredential(
            id=claim_id,
            token=token,
            certificate=ca.to_pem(claim_cert).decode(),
            key=identity.key_to_pem(claim_key).decode(),
        ),
        labels=labels,
        created_at=time.time(),
        expires_at=expires_at,
        max_uses=max_uses,
        tuf_root=_tuf_root(home),
        repository_url=config.repository.public_url or None,
    )
    signing = identity.load_signing_key(home.signing_key.read_bytes())
    return claim_id, sign_bundle(payload, signing)


def create(args: argparse.Namespace) -> int:
    home = home_of(args)
    claim_id, data = create_bundle(
        home, parse_labels(args.labels), parse_duration(args.expires), args.max_uses
    )
    write_secret(args.out, data)
    print(
        f"bundle {args.out} written: claim {claim_id}, up to {args.max_uses} devices, "
        f"expires in {args.expires}"
    )
    return 0


def pubkey(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.require()
    print(home.signing_pub.read_text(), end="")
    return 0


def list_claims(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.require()
    registry = open_registry(home)
    try:
        claims = registry.claims()
    finally:
        registry.close()
    now = time.time()
    rows: list[dict[str, Any]] = [
        {
            "claim": c.id,
            "labels": c.labels,
            "uses": c.uses,
            "max_uses": c.max_uses,
            "expires_at": c.expires_at,
            "status": "revoked" if c.revoked_at else "expired" if now >= c.expires_at else "active",
        }
        for c in claims
    ]
    if args.json:
        print_json(rows)
        return 0
    table = [
        r
        | {
            "labels": ",".join(f"{k}={v}" for k, v in r["labels"].items()),
            "uses": f"{r['uses']}/{r['max_uses']}",
            "expires_at": time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["expires_at"])),
        }
        for r in rows
    ]
    print_table(table, ["claim", "status", "uses", "expires_at", "labels"])
    return 0


def revoke(args: argparse.Namespace) -> int:
    home = home_of(args)
    home.require()
    registry = open_registry(home)
    try:
        if registry.claim(args.claim_id) is None:
            raise ConfigError(f"no claim {args.claim_id!r}; see `spoke-hub bundle list`")
        registry.revoke_claim(args.claim_id)
    finally:
        registry.close()
    print(f"claim {args.claim_id} revoked: its bundle enrolls no more devices")
    return 0
