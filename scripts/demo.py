"""``make demo``: a local hub with its managed broker and appliances that provision themselves.

It runs real processes on loopback in a temporary directory and shows each step. With
``--exit`` (or SPOKE_DEMO_EXIT=1) it ends by itself; otherwise it stays up until Ctrl-C.
"""

import argparse
import json
import os
import signal
import ssl
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.fleet import Appliance, Hub, cli, wait_for

APPLIANCES = 2


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def tool(module: str, *args: str) -> str:
    """A ``spoke-hub`` (module ``provisioning``) or ``spoke`` (``daemon``) command's output,
    however long it takes (a fine-tune on a loaded machine)."""
    return cli({"provisioning": "spoke-hub", "daemon": "spoke"}[module], *args,
               timeout=None).stdout


class Demo:
    """The demo's fleet, through the fleet-control module the tests use (tests/support/fleet.py):
    one hub, ``APPLIANCES`` appliances that find the bundle where a USB stick would put it,
    and an uplink box added later."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hub: Hub | None = None
        self.appliances: list[Appliance] = []
        #: (mission, the model version that served it, its report file, its ground-truth
        #: line) per flight.
        self.flights: list[tuple[str, str, Path, str]] = []

    @property
    def home(self) -> Path:
        return self.root / "hub"

    def spoke_hub(self, *args: str) -> str:
        """``spoke-hub ARGS --home HOME``: its output, to show."""
        assert self.hub is not None
        return self.hub.run(*args)

    def devices(self) -> list[dict[str, Any]]:
        assert self.hub is not None
        return list(self.hub.devices().values())

    def appliance(self, name: str, config: str) -> Appliance:
        """A new appliance whose state directory holds the bundle and ``config`` (spoke.toml);
        it runs with the daemon's defaults, not the tests' quick retries."""
        assert self.hub is not None
        box = Appliance(self.root, self.hub, name, base_env={})
        box.state_dir.mkdir()
        # The bundle sits where a technician's USB stick would put it.
        (box.state_dir / "bundle.spoke").write_bytes((self.root / "bridge-17.spoke").read_bytes())
        (box.state_dir / "spoke.toml").write_text(config)
        self.appliances.append(box)
        return box

    def run(self) -> None:
        step(f"Creating a hub home in {self.home}")
        self.hub = hub = Hub(self.root)
        print(hub.created, end="")

        step(f"Starting the hub and its managed mosquitto (mTLS on port {hub.mqtt_port})")
        hub.start()

        step("Creating a signed provisioning bundle for site bridge-17")
        print(self.spoke_hub("bundle", "create", "--labels", "site=bridge-17,region=north",
                             "--max-uses", "5", "--out", str(self.root / "bridge-17.spoke")),
              end="")

        step(f"Plugging in {APPLIANCES} appliances: each finds the bundle and enrolls itself")
        for i in range(APPLIANCES):
            self.appliance(f"appliance-{i}", demo_appliance_config()).start()
        wait_for(
            lambda: sum(d["availability"] == "online" for d in self.devices()) == APPLIANCES,
            60,
            "the appliances to come online",
            interval=0.3,
        )

        step("The fleet as the hub sees it (spoke-hub devices)")
        print(self.spoke_hub("devices"), end="")
        step("One appliance's own view (spoke status)")
        print(self.appliances[0].run("status"), end="")

        model_delivery_steps(self)

        uplink = start_uplink(self)
        self.flights.append(flight(self, uplink, FLIGHTS[0], "with the fleet's model"))
        finetune_steps(self, uplink)
        self.flights.append(flight(self, uplink, FLIGHTS[1], "new frames, after the fine-tune"))
        self.show_urls()

    def show_urls(self) -> None:
        """Where a person looks next: the hub's dashboard, a box's status page, the reports."""
        assert self.hub is not None
        box = self.appliances[-1]
        step(f"Detections against the generator's ground truth, site {SITE_DOMAIN} "
             "(spoke report --ground-truth), before and after the site's fine-tune")
        for mission, served, _, line in self.flights:
            print(f"{mission} (served by {served}): {line}")
        step("Open these")
        token = self.spoke_hub("tokens", "create", "--name", f"demo-{os.getpid()}").strip()
        print(f"hub dashboard:         https://localhost:{self.hub.http_port}/login#token={token}"
              " (signs in with an operator token; certificate from the hub's own CA)")
        print(f"appliance status page: https://127.0.0.1:{box.api_port}/ (hub CA certificate)")
        for _, _, report, _ in self.flights:
            print(f"mission report:        file://{report}")
        print(f"  (also GET https://127.0.0.1:{box.api_port}/v1/missions/MISSION/report "
              "with the uplink token)")

    def stop(self) -> None:
        step("Shutting down: appliances first (they report 'stopped'), then the hub")
        codes = [box.stop() for box in reversed(self.appliances)]
        codes.append(self.hub.stop() if self.hub else 0)
        print(f"exit codes: {codes}")
        if any(codes):
            raise SystemExit("demo: a process did not stop cleanly; logs are in " + str(self.root))


# --- signed model delivery (issue 5) ---------------------------------------------------------

def demo_appliance_config() -> str:
    """Each demo appliance's spoke.toml: ONNX Runtime (no backend probing) and a 3-second
    health gate, so a rollout shows in seconds rather than the default two minutes. (Its API
    port on loopback comes from the fleet control, ``SPOKE_API__LISTEN``.)"""
    return """[models]
backend = "onnxruntime"
gate_quiet_s = 3
retry_initial_s = 1
"""

DEMO_POLICY = """# Bridge appliances run codebrim-vit-t 1.x; a new version reaches half first.
[[rule]]
name = "bridges"
selector = "site in (bridge-17, bridge-18), region!=south"
model = "codebrim-vit-t"
version = ">=1.0,<2"
canary = 50
"""


def _models_of(demo: Demo) -> list[tuple[str | None, str | None]]:
    found = []
    for d in demo.devices():
        model = (d.get("state") or {}).get("model") or {}
        found.append((model.get("version"), model.get("state")))
    return found


def _wait_fleet_on(demo: Demo, version: str, timeout: float = 180) -> None:
    wait_for(
        lambda: _models_of(demo) == [(version, "committed")] * APPLIANCES,
        timeout,
        f"every appliance to commit {version}",
        interval=0.3,
    )


def foundation_artifacts(artifacts: Path, work: Path) -> None:
    """The hub's foundation model (pre-trained on generated concrete of other sites, with a
    trained head; built once from a seed and cached), its thresholds calibrated for the
    fleet's per-frame decision on generated frames of other sites, packaged for this fleet as
    codebrim-vit-t 1.0.0 and 1.1.0."""
    from models.artifact import load_artifact, write_artifact
    from models.decide import Decision
    from models.framecal import frame_thresholds
    from models.training.foundation import DEFAULT_CONFIG, build_foundation_model

    step("Building the foundation model at the hub (the default recipe: "
         f"{DEFAULT_CONFIG.steps} steps supervised on generated concrete of "
         f"{len(DEFAULT_CONFIG.domains)} other sites, never site {SITE_DOMAIN}; seed 0; cached "
         "under ~/.cache/spoke after the first run)")
    foundation = load_artifact(build_foundation_model(seed=0))
    card = foundation.card
    sites = ", ".join(map(str, CALIBRATION_SITES))
    step(f"Calibrating its thresholds for the fleet's decision (a label per frame, the maximum "
         f"over its tiles, downscale {UPLINK_DOWNSCALE}) on {CALIBRATION_FRAMES} generated frames "
         f"each of sites {sites}, never site {SITE_DOMAIN}")
    thresholds = frame_thresholds(foundation, CALIBRATION_SITES, CALIBRATION_FRAMES, work,
                                  downscale=UPLINK_DOWNSCALE)
    print(f"{'LABEL':<16} {'PER TILE':>8} {'PER FRAME':>9}")
    for name in card.labels:
        print(f"{name:<16} {card.thresholds.get(name, 0.5):>8.3f} {thresholds[name]:>9.3f}")
    model = foundation.build_model()
    step("Packaging it for the fleet: codebrim-vit-t 1.0.0, and 1.1.0 (the same weights under "
         "a new version, to show a canary rollout); each card says its thresholds decide per "
         f"frame at downscale {UPLINK_DOWNSCALE}")
    for version in ("1.0.0", "1.1.0"):
        write_artifact(model, artifacts / version, name="codebrim-vit-t", version=version,
                       labels=card.labels, thresholds=thresholds,
                       preprocessing=card.preprocessing, metrics=card.metrics,
                       parent=f"{card.name}@{card.version}",
                       decision=Decision("frame", UPLINK_DOWNSCALE))
        print(f"{artifacts / version}: parent {card.name}@{card.version}")


def model_delivery_steps(demo: Demo) -> None:
    """Publish a model and a placement policy; the appliances pull, verify and activate it;
    a second version rolls out canary first; ``spoke-hub devices`` shows each step."""
    home = str(demo.home)
    artifacts = demo.root / "artifacts"
    foundation_artifacts(artifacts, demo.root / "calibration-frames")

    step("Publishing 1.0.0 to the hub's signed model repository (TUF targets)")
    print(tool("provisioning", "models", "publish", "--home", home, str(artifacts / "1.0.0")),
          end="")
    print(tool("provisioning", "models", "list", "--home", home), end="")

    step("Applying a placement policy (spoke-hub policy apply)")
    print(DEMO_POLICY, end="")
    policy = demo.root / "policy.toml"
    policy.write_text(DEMO_POLICY)
    print(tool("provisioning", "policy", "apply", "--home", home, str(policy)), end="")

    step("The appliances pull 1.0.0 over HTTPS, verify it against the pinned TUF root, "
         "smoke-test and activate it (canary first)")
    _wait_fleet_on(demo, "1.0.0")
    print(tool("provisioning", "devices", "--home", home), end="")

    step("Publishing 1.1.0: the canary appliance takes it first, then the rest")
    print(tool("provisioning", "models", "publish", "--home", home, str(artifacts / "1.1.0")),
          end="")
    wait_for(lambda: ("1.1.0", "committed") in _models_of(demo) or
             ("1.1.0", "probation") in _models_of(demo), 120, "the canary to take 1.1.0",
             interval=0.3)
    print(tool("provisioning", "devices", "--home", home), end="")
    _wait_fleet_on(demo, "1.1.0")
    step("Every appliance committed 1.1.0 after its health gate (spoke-hub devices)")
    print(tool("provisioning", "devices", "--home", home), end="")
    step("One appliance's model store (spoke models list): 1.0.0 kept for rollback")
    print(tool("daemon", "models", "list", "--state-dir", str(demo.root / "appliance-0")),
          end="")


# --- drone uplink (issue 4) ------------------------------------------------------------------

UPLINK_FRAMES = 8
#: The two flights over bridge-17: the first with the fleet's model, the second (new frames of
#: the same wall) after the site's fine-tune.
FLIGHTS = ("bridge-17-pass-1", "bridge-17-pass-2")
#: The generator's site seed for bridge-17: this site's own concrete, which the foundation
#: model never saw (it trains on sites 1-24 and calibrates on 999).
SITE_DOMAIN = 41
#: The uplink box's spoke.toml: the fleet's model by signed delivery (as every appliance),
#: ONNX Runtime, and frames halved before tiling: the demo's drone frames show one reference
#: pixel of wall per pixel, and the model's 128-pixel tiles were trained on 224 reference
#: pixels (x0.7 to x1.4), so halving puts the served tiles inside the trained scales
#: (docs/FOUNDATION-MODEL.md measures both).
UPLINK_DOWNSCALE = 2
UPLINK_CONFIG = demo_appliance_config() + f"""
[uplink]
backend = "onnxruntime"
downscale = {UPLINK_DOWNSCALE}
"""
#: Generated sites whose frames set the fleet model's thresholds (never bridge-17's).
CALIBRATION_SITES = (999, 998, 997, 996)
CALIBRATION_FRAMES = 16


@dataclass
class Uplink:
    """The uplink box, the drone's token and TLS context, and the frames of both flights."""

    box: Appliance
    token: str
    base: str
    hub_ca: ssl.SSLContext
    frames: Path


def input_size(demo: Demo) -> int:
    """The fleet model's tile size (its card's preprocessing)."""
    card = json.loads((demo.root / "artifacts" / "1.1.0" / "card.json").read_text())
    return int(card["preprocessing"]["input_size"])


def start_uplink(demo: Demo) -> Uplink:
    """A drone uplink appliance on the same site: it enrolls with the bundle, takes the fleet's
    model (codebrim-vit-t 1.1.0) by signed delivery like every appliance, and serves the
    uplink API with it; the frames of both flights are generated with their boxes."""
    box = demo.appliance("uplink-box", UPLINK_CONFIG)
    step(f"Drone uplink: generated drone frames of site {SITE_DOMAIN} for two flights (with "
         "their ground-truth boxes) and an API token")
    frames = demo.root / "frames"
    print(tool("provisioning", "data", "generate", "--domain", str(SITE_DOMAIN), "--frames",
               str(UPLINK_FRAMES * len(FLIGHTS)), "--frame-size", "1600x1200", "--out",
               str(frames)), end="")
    token = box.run("tokens", "create", "--name", "ground-station").strip()
    print(f"token for ground-station: {token[:10]}... (shown once, stored hashed)")

    step(f"Starting the uplink appliance (API on port {box.api_port}): it enrolls and pulls "
         "the fleet's model, codebrim-vit-t 1.1.0")
    box.start()
    # HTTPS: once enrolled, the box serves a certificate from the hub's CA (for 127.0.0.1);
    # before that its own self-signed one. The drone's client checks it, so wait for that.
    base = f"https://127.0.0.1:{box.api_port}"
    hub_ca = ssl.create_default_context(cafile=str(demo.home / "ca" / "ca.crt"))

    def ready() -> bool:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2, context=hub_ca) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    wait_for(ready, 90, "the uplink API to be ready with the hub CA's certificate",
             interval=0.3)
    wait_for(lambda: _model_of(demo, box) == ("1.1.0", "committed"), 180,
             "the uplink box to commit 1.1.0", interval=0.3)
    return Uplink(box, token, base, hub_ca, frames)


def _model_of(demo: Demo, box: Appliance) -> tuple[str | None, str | None]:
    """The model version and state the hub last heard from ``box``."""
    assert demo.hub is not None
    device = demo.hub.devices().get(json.loads(box.run("status", "--json"))["device_id"]) or {}
    model = (device.get("state") or {}).get("model") or {}
    return model.get("version"), model.get("state")


def flight(demo: Demo, uplink: Uplink, mission: str, title: str
           ) -> tuple[str, str, Path, str]:
    """One flight: its frames posted concurrently by a real HTTP client, the results, what the
    hub heard, and the mission report with the detections against the ground truth."""
    import asyncio

    import aiohttp

    k = FLIGHTS.index(mission)
    paths = sorted(uplink.frames.glob("*.jpg"))[k * UPLINK_FRAMES:(k + 1) * UPLINK_FRAMES]

    async def post_all() -> list[dict[str, Any]]:
        auth = {"Authorization": f"Bearer {uplink.token}"}
        connector = aiohttp.TCPConnector(ssl=uplink.hub_ca)
        async with aiohttp.ClientSession(uplink.base, connector=connector) as http:
            async def post(path: Path) -> str:
                form = aiohttp.FormData()
                form.add_field("mission", mission)
                form.add_field("drone", "drone-1")
                form.add_field("image", path.read_bytes(), content_type="image/jpeg",
                               filename=path.name)
                async with http.post("/v1/images", data=form, headers=auth) as resp:
                    body = await resp.json()
                    print(f"POST {path.name}: {resp.status} {body['id'][:12]}... "
                          f"-> {body['location'][:22]}...")
                    return str(body["id"])

            ids = await asyncio.gather(*(post(p) for p in paths))
            results = []
            for image_id in ids:
                while True:
                    async with http.get(f"/v1/images/{image_id}", headers=auth) as resp:
                        result = await resp.json()
                    if result["status"] in ("done", "failed"):
                        results.append(result)
                        break
                    await asyncio.sleep(0.3)
            async with http.get(f"/v1/missions/{mission}", headers=auth) as resp:
                summary = await resp.json()
            print(f"mission {mission}: {summary['processed']} of {summary['images']} "
                  f"processed, labels {summary['label_counts']}")
            return results

    step(f"Flight {mission} ({title}): posting {len(paths)} drone frames concurrently "
         "(multipart, aiohttp client)")
    results = asyncio.run(post_all())
    served = ", ".join(sorted({f"{r['model']['name']}@{r['model']['version']}"
                               for r in results if r.get("model")}))
    for r in results:
        gps = r["gps"] or {}
        print(f"{r['id'][:12]}  {r['status']:<6} {len(r['tiles'] or [])} tiles  "
              f"{', '.join(r['labels'] or []) or '-'}  at {gps.get('latitude')},"
              f"{gps.get('longitude')}  ({r['model']['name']}@{r['model']['version']})")

    step("The detection summaries the hub received (spoke-hub events); no image left the box")
    seen = UPLINK_FRAMES * (k + 1)
    wait_for(
        lambda: len(json.loads(tool("provisioning", "events", "--home", str(demo.home),
                                    "--kind", "detection", "--json"))) >= seen,
        60, "the hub to receive the detection events")
    events = tool("provisioning", "events", "--home", str(demo.home), "--kind", "detection")
    print("\n".join(events.splitlines()[: 1 + UPLINK_FRAMES]))  # the header, newest first

    report = demo.root / f"{mission}.html"
    step(f"Mission report of {mission} with the detections against the generator's ground "
         "truth (spoke report --ground-truth)")
    out = uplink.box.run("report", mission, "--out", str(report), "--ground-truth",
                         str(uplink.frames))
    print(out, end="")
    line = next(x for x in out.splitlines() if x.startswith("detections vs ground truth"))
    return mission, served, report, line


# --- local fine-tuning (issue 8) ------------------------------------------------------------

FINETUNE_SAMPLES = 100
#: Whole frames of an earlier survey of the site (after the flights' frames, never theirs),
#: labeled per frame: the fleet model decides per frame, so its fine-tune is calibrated on
#: half of them and judged on the other half (models.finetune.heldout).
SURVEY_FRAMES = 64


def finetune_steps(demo: Demo, uplink: Uplink) -> None:
    """An engineer on site labels 100 tiles of this bridge (generated from the site's own
    domain), fine-tunes the uplink box's model on the box with the defaults, and sees both
    models' metrics on the held-out split and whether the gate promoted the candidate. The hub
    hears about it as an event and in the reported state; no image leaves the site."""
    box = uplink.box
    tiles = demo.root / "site-samples"
    step(f"Fine-tuning: labeling {FINETUNE_SAMPLES} tiles of bridge-17's own concrete "
         "(spoke-hub data generate, spoke samples import)")
    print(tool("provisioning", "data", "generate", "--domain", str(SITE_DOMAIN), "--tiles",
               str(FINETUNE_SAMPLES), "--size", str(input_size(demo)), "--out", str(tiles)),
          end="")
    print(box.run("samples", "import", str(tiles)), end="")
    survey = demo.root / "site-survey"
    first = UPLINK_FRAMES * len(FLIGHTS)
    step(f"... and {SURVEY_FRAMES} whole frames of an earlier survey of bridge-17 (frames "
         f"{first} to {first + SURVEY_FRAMES - 1}, none of the flights'), labeled per frame: the "
         "fleet model decides per frame, so its fine-tune is calibrated and judged on frames")
    print(tool("provisioning", "data", "generate", "--domain", str(SITE_DOMAIN), "--frames",
               str(SURVEY_FRAMES), "--first", str(first), "--frame-size", "1600x1200", "--out",
               str(survey)), end="")
    print(box.run("samples", "import", str(survey)), end="")
    print(box.run("samples", "list").splitlines()[-2])

    step("Fine-tuning on the uplink box with its defaults: spoke finetune start --wait "
         "(a worker process at low priority; held-out split, evaluation gate, promotion)")
    started = time.monotonic()
    print(tool("daemon", "finetune", "start", "--state-dir", str(box.state_dir), "--wait"),
          end="")
    print(f"(fine-tune took {time.monotonic() - started:.0f} s end to end)")

    step("What the hub heard (spoke-hub events --kind finetune_finished): metrics, no images")
    wait_for(lambda: json.loads(tool("provisioning", "events", "--home", str(demo.home),
                                     "--kind", "finetune_finished", "--json")),
             60, "the hub to receive the fine-tune outcome", interval=0.3)
    print(tool("provisioning", "events", "--home", str(demo.home), "--kind",
               "finetune_finished"), end="")
    print(box.run("models", "list"), end="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exit", action="store_true", help="end by itself (for CI)")
    args = parser.parse_args()
    auto_exit = args.exit or os.environ.get("SPOKE_DEMO_EXIT") == "1"
    with tempfile.TemporaryDirectory(prefix="spoke-demo-") as tmp:
        demo = Demo(Path(tmp))
        try:
            demo.run()
            if not auto_exit:
                step("Running. Logs are in " + tmp + ". Press Ctrl-C to stop.")
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        except KeyboardInterrupt:
            pass
        except AssertionError as exc:  # a command failed or a wait timed out (CommandFailed)
            raise SystemExit(f"demo: {exc}\n(logs were in {tmp})") from None
        finally:
            demo.stop()
    step("Done")


if __name__ == "__main__":
    main()
