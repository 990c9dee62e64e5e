"""``spoke pair [--name NAME] [--minutes M] | --cancel``: show a new uplink token on the status
page, with a QR code, for a few minutes, so a drone app can pair by scanning it.

This is the deliberate act that lets the read-only status page show a secret at all (see
``daemon/web/pairing.py``): it creates a token like ``spoke tokens create`` (stored hashed), and
the page shows it until the app posts its first image or the window closes. ``--cancel``
withdraws the offer and revokes its token when nothing has used it.
"""

import argparse
import time

from appliance.cli import print_json
from daemon.commands.run import add_state_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pair", help="show a new uplink token on the status page for a drone app")
    add_state_dir(p)
    p.add_argument("--name", default=None,
                   help="the token's name (default drone-app-YYYYmmdd-HHMMSS)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="how long the status page shows it (default 10, at most 60)")
    p.add_argument("--cancel", action="store_true",
                   help="withdraw the current offer (its token is revoked if unused)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from appliance.errors import ConfigError
    from daemon.uplink.tokens import TokenStore
    from daemon.web import pairing
    from daemon.web.results import Results

    root = args.state_dir.resolve() / "uplink"
    root.mkdir(parents=True, exist_ok=True, mode=0o750)
    if args.cancel:
        offer = pairing.read_offer(root)
        pairing.remove_offer(root)
        if offer is None:
            print("no pairing offer to withdraw")
            return 0
        revoked = False
        if not Results(root).used_by(offer.name):
            store = TokenStore(root / "tokens.db")
            try:
                store.revoke(offer.name)
                revoked = True
            except ConfigError:
                pass
            finally:
                store.close()
        if args.json:
            print_json({"withdrawn": offer.name, "revoked": revoked})
        else:
            print(f"pairing offer {offer.name} withdrawn"
                  + ("; its unused token is revoked" if revoked else ""))
        return 0
    if not 0 < args.minutes <= pairing.MAX_MINUTES:
        raise ConfigError(f"--minutes must be more than 0 and at most {pairing.MAX_MINUTES:g}")
    name = args.name or time.strftime("drone-app-%Y%m%d-%H%M%S", time.gmtime())
    # The token dies with the offer unless the app used it in time (no clean-up needed).
    until = time.time() + args.minutes * 60
    store = TokenStore(root / "tokens.db")
    try:
        info, token = store.create(name, unused_until=until)
    finally:
        store.close()
    offer = pairing.write_offer(root, info.name, token, args.minutes, expires_at=until)
    if args.json:
        print_json({"name": offer.name, "expires_at": offer.expires_at})
    else:
        print(f"token {offer.name} is shown on the status page (http(s)://<appliance>:<port>/) "
              f"for {args.minutes:g} min or until the app sends its first image")
    return 0
