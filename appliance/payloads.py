"""Payload schemas of the MQTT contract. Every message is validated on arrival; extras refused."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

PROTOCOL: Literal[1] = 1


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A host name or an IP address the appliance's API answers on (for its server certificate).
ServerName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9:][A-Za-z0-9.:-]{0,252}$")]
ServerNames = Annotated[list[ServerName], Field(max_length=16)]


class EnrollRequest(Payload):
    """Sent by a device with its claim credential. Hardware facts travel inside the CSR."""

    protocol: Literal[1] = PROTOCOL
    claim_id: str = Field(min_length=1, max_length=64)
    claim_token: str = Field(min_length=16, max_length=128)
    csr: str = Field(min_length=1, max_length=16384)
    software_version: str = Field(max_length=64)
    #: Names for the API's server certificate (same key as the CSR); none: no server cert.
    server_names: ServerNames = []


class EnrollAccepted(Payload):
    status: Literal["accepted"] = "accepted"
    device_id: str
    certificate: str
    ca_certificate: str
    labels: dict[str, str]
    server_certificate: str | None = None


class EnrollRefused(Payload):
    status: Literal["refused"] = "refused"
    code: str
    reason: str


class RenewRequest(Payload):
    """Sent by an enrolled device on its own renew topic, with the certificate it holds now.

    The broker has already checked that certificate (chain, expiry, CRL) and bound the topic
    to its common name; the hub checks it again against its registry before signing the CSR.
    """

    protocol: Literal[1] = PROTOCOL
    certificate: str = Field(min_length=1, max_length=16384)
    csr: str = Field(min_length=1, max_length=16384)
    software_version: str = Field(max_length=64)
    server_names: ServerNames = []


class RenewAccepted(Payload):
    status: Literal["accepted"] = "accepted"
    device_id: str
    certificate: str
    ca_certificate: str
    server_certificate: str | None = None


class ReportedState(Payload):
    """Retained on ``spoke/v1/{device}/state``: what the device is and runs."""

    device_id: str
    software_version: str
    provisioning: str
    labels: dict[str, str] = {}
    capabilities: dict[str, Any] = {}
    model: dict[str, Any] | None = None
    started_at: float


class Event(Payload):
    """One event from a device's durable outbox; ``id`` lets the hub drop redeliveries."""

    id: str = Field(min_length=1, max_length=64)
    kind: str = Field(min_length=1, max_length=64)
    ts: float
    data: dict[str, Any]


COMMANDS = ("ping", "health", "restart", "support-bundle", "finetune")
ArgValue = str | int | float | bool


class CommandRequest(Payload):
    """Published by the hub on ``spoke/v1/{device}/cmd/{name}``; validated before acting."""

    id: str = Field(min_length=1, max_length=64)
    args: dict[str, ArgValue] = {}
    sent_at: float


class CommandResult(Payload):
    """The device's answer on ``.../cmd/{name}/result``, matched to the request by ``id``."""

    id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None


AVAILABLE_ONLINE = b"online"
AVAILABLE_STOPPED = b"stopped"
AVAILABLE_OFFLINE = b"offline"
