"""Remote commands: the hub asks, the device validates, runs and answers."""

import io
import json
import tarfile
from pathlib import Path

from tests.support.fleet import Appliance, Hub, cli, wait_for


def cmd(hub: Hub, device_id: str, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
    return cli(
        "spoke-hub",
        "device",
        "cmd",
        "--home",
        str(hub.home),
        device_id,
        *args,
        "--timeout",
        "20",
        check=check,
    )


def test_ping_answers_with_version_and_uptime(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, device_id = online
    result = json.loads(cmd(hub, device_id, "ping", "--json").stdout)
    assert result["ok"] and result["result"]["pong"] is True
    assert result["result"]["uptime_s"] > 0


def test_health_returns_a_fresh_snapshot(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, device_id = online
    snapshot = json.loads(cmd(hub, device_id, "health").stdout)
    assert snapshot["host"]["memory"]["total_bytes"] > 0
    assert snapshot["gpu"]["status"] in ("absent", "unavailable")


def test_unknown_command_is_refused_before_sending(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, device_id = online
    proc = cmd(hub, device_id, "selfdestruct", check=False)
    assert proc.returncode == 2 and "unknown command 'selfdestruct'" in proc.stderr


def test_bad_arguments_are_refused_by_the_device(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, device_id = online
    proc = cmd(hub, device_id, "ping", "loud=yes", check=False)
    assert proc.returncode == 1
    assert "takes no arguments" in proc.stderr


def test_malformed_argument_syntax_is_refused(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, device_id = online
    proc = cmd(hub, device_id, "ping", "novalue", check=False)
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr


def test_command_to_an_unknown_device_is_refused(online: tuple[Hub, Appliance, str]) -> None:
    hub, _, _ = online
    proc = cmd(hub, "dev-nope", "ping", check=False)
    assert proc.returncode == 2 and "no device" in proc.stderr


def test_support_bundle_is_uploaded_and_kept_with_secrets_redacted(
    online: tuple[Hub, Appliance, str],
) -> None:
    hub, _, device_id = online
    result = json.loads(cmd(hub, device_id, "support-bundle").stdout)
    stored = Path(result["stored"])
    assert stored.is_relative_to(hub.home / "support" / device_id)
    with tarfile.open(fileobj=io.BytesIO(stored.read_bytes())) as tar:
        names = set(tar.getnames())
        assert {
            "logs.jsonl",
            "config.json",
            "status.json",
            "health-history.json",
            "reported-state.json",
            "identity.json",
        } <= names
        config = json.loads(tar.extractfile("config.json").read())  # type: ignore[union-attr]
        logs = tar.extractfile("logs.jsonl").read().decode()  # type: ignore[union-attr]
    assert config["api"]["tls_key"] in (None, "<redacted>")
    assert "hub link up" in logs
    assert "PRIVATE KEY" not in stored.read_bytes().decode(errors="replace")


def test_restart_goes_through_the_supervisor_and_comes_back(
    online: tuple[Hub, Appliance, str],
) -> None:
    hub, appliance, device_id = online
    assert json.loads(cmd(hub, device_id, "restart").stdout) == {"restarting": True}
    assert appliance.process is not None
    wait_for(lambda: "daemon restarting" in appliance.process.output(), 20, "the restart")  # type: ignore[union-attr]
    hub.wait_availability(device_id, "online")
    assert appliance.process.running()
    assert json.loads(cmd(hub, device_id, "ping", "--json").stdout)["ok"]


def test_command_to_an_offline_device_is_refused(tmp_path: Path) -> None:
    hub = Hub(tmp_path).start()
    box = Appliance(tmp_path, hub).start(hub.bundle(tmp_path / "b.spoke"))
    try:
        device_id = box.wait_enrolled()
        box.stop()
        hub.wait_availability(device_id, "stopped")
        proc = cmd(hub, device_id, "ping", check=False)
        assert proc.returncode == 2
        assert "is stopped" in proc.stderr and "only online devices" in proc.stderr
    finally:
        box.kill()
        hub.stop()
