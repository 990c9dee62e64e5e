"""Every MQTT topic of the contract in DESIGN.md, built here and nowhere else."""

import re

ROOT = "spoke/v1"
ENROLL_REQUEST = f"{ROOT}/enroll/request"

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_RESPONSE = re.compile(rf"^{ROOT}/enroll/([A-Za-z0-9][A-Za-z0-9_-]{{0,63}})/response$")


def valid_id(value: str) -> bool:
    """Device and client ids are plain tokens: no MQTT wildcards, slashes or spaces."""
    return bool(_ID.match(value))


def _checked(value: str) -> str:
    if not valid_id(value):
        raise ValueError(f"not a valid MQTT id: {value!r}")
    return value


def enroll_response(client_id: str) -> str:
    return f"{ROOT}/enroll/{_checked(client_id)}/response"


def is_enroll_response(topic: str) -> bool:
    """The hub answers only on topics of this shape, so it cannot be made to write elsewhere."""
    return bool(_RESPONSE.match(topic))


def available(device: str) -> str:
    return f"{ROOT}/{_checked(device)}/available"


def state(device: str) -> str:
    return f"{ROOT}/{_checked(device)}/state"


def health(device: str) -> str:
    return f"{ROOT}/{_checked(device)}/health"


def events(device: str) -> str:
    return f"{ROOT}/{_checked(device)}/events"


def events_ack(device: str) -> str:
    """The hub names the events it has stored here; only then may the device forget them."""
    return f"{ROOT}/{_checked(device)}/events/ack"


def desired(device: str) -> str:
    return f"{ROOT}/{_checked(device)}/desired"


def renew_request(device: str) -> str:
    """A device asks for a new certificate here, over its current mTLS session."""
    return f"{ROOT}/{_checked(device)}/renew/request"


def renew_response(device: str) -> str:
    return f"{ROOT}/{_checked(device)}/renew/response"


def command(device: str, name: str) -> str:
    return f"{ROOT}/{_checked(device)}/cmd/{_checked(name)}"


def command_result(device: str, name: str) -> str:
    return f"{command(device, name)}/result"


# Wildcard subscriptions of the hub.
ALL_AVAILABLE = f"{ROOT}/+/available"
ALL_STATE = f"{ROOT}/+/state"
ALL_HEALTH = f"{ROOT}/+/health"
ALL_EVENTS = f"{ROOT}/+/events"
ALL_COMMAND_RESULTS = f"{ROOT}/+/cmd/+/result"
ALL_RENEW_REQUESTS = f"{ROOT}/+/renew/request"


def device_of(topic: str) -> str | None:
    """The device id in ``spoke/v1/{device}/...``, or None for enrollment and foreign topics."""
    parts = topic.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != ROOT or parts[2] == "enroll":
        return None
    return parts[2] if valid_id(parts[2]) else None
