"""Fuzzing, time-boxed for ``make test`` (``FUZZ_SECONDS`` per target; ``make fuzz`` gives
each target longer): bytes into the image decoder and the multipart parser, and a stateful
schemathesis run against the uplink API that follows its OpenAPI links (post an image, then
read its result and overlay). Each prints a ``FUZZ`` line with the cases it tried."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import not_a_server_error

from tests.faults.fuzz_bytes import parse_libfuzzer
from tests.support.fleet import REPO
from tests.uplink.test_openapi import CHECKS, LiveUplink, live, schema

__all__ = ["live"]  # the module-scoped live uplink fixture, shared with the OpenAPI tests

pytestmark = pytest.mark.slow

FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "10"))
STATEFUL_EXAMPLES = int(os.environ.get("FUZZ_STATEFUL_EXAMPLES", "10"))


@pytest.mark.parametrize("target", ["decoder", "multipart"])
def test_byte_fuzzing_finds_no_crash_no_500_no_hang(target: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.faults.fuzz_bytes", target, "--seconds", str(FUZZ_SECONDS)],
        # Start-up (torch, a tiny model, the live API) can take minutes on a loaded machine.
        capture_output=True, text=True, cwd=REPO, timeout=FUZZ_SECONDS + 600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    cases = parse_libfuzzer(output)
    if cases is None:  # the hypothesis engine prints its own line
        line = next(ln for ln in output.splitlines() if ln.startswith("FUZZ "))
        cases = int(line.split("cases=")[1].split()[0])
    print(f"FUZZ target={target} seconds={FUZZ_SECONDS} cases={cases} crashes=0")
    assert cases > 0


def test_stateful_uplink_api(live: LiveUplink) -> None:
    base = f"http://127.0.0.1:{live.port}"
    calls = {"n": 0}

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base, "headers": {"Authorization": f"Bearer {live.token}"}}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            case.validate_response(response, checks=(*CHECKS, not_a_server_error))

    run_state_machine_as_test(Workflow, settings=settings(
        max_examples=STATEFUL_EXAMPLES, stateful_step_count=8, deadline=None,
        suppress_health_check=list(HealthCheck)))
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
    print(f"FUZZ target=stateful-api sequences={STATEFUL_EXAMPLES} calls={calls['n']} "
          "server_errors=0")
    assert calls["n"] > 0
