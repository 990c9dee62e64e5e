"""Payload schemas of the MQTT contract, validated where they arrive: the hub validates what
devices send (enrollment, renewal, reported state, events, command results) and the device what
the hub sends (desired state, commands). Extras are refused, except in reported state, where a
newer appliance may add fields an older hub does not know yet."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

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


class ReportedModel(BaseModel):
    """The model part of reported state (``ModelService.reported()``)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str | None = None
    version: str | None = None
    sha256: str | None = None
    state: Literal["none", "probation", "committed"] = "none"
    desired: str | None = None
    hold: bool = False
    last_error: dict[str, Any] | None = None


class ReportedState(BaseModel):
    """Retained on ``spoke/v1/{device}/state``: what the device is and runs. The hub refuses
    (and counts) a state that does not fit, and one that names another device."""

    model_config = ConfigDict(extra="allow", frozen=True)
    device_id: str = Field(min_length=1, max_length=64)
    software_version: str = Field(max_length=64)
    provisioning: str = Field(max_length=64)
    labels: dict[str, str] = {}
    started_at: float
    model: ReportedModel | None = None
    #: Orders states from one device (a replayed or late one never overwrites a newer one);
    #: None from older daemons.
    seq: StrictInt | None = Field(None, ge=0, le=2**63 - 1)


EventId = Annotated[str, Field(min_length=1, max_length=64)]


class EventRef(BaseModel):
    """Just an event's id: what the hub needs to acknowledge an event it refuses (sending it
    again will not make it valid, so the device may forget it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: EventId


class Event(Payload):
    """One event from a device's durable outbox; ``id`` lets the hub drop redeliveries."""

    id: EventId
    kind: str = Field(min_length=1, max_length=64)
    ts: float
    data: dict[str, Any]


class EventAck(Payload):
    """Published by the hub on ``spoke/v1/{device}/events/ack`` once the events are stored
    (redeliveries too): a broker's PUBACK alone does not survive the broker's crash."""

    ids: list[str] = Field(min_length=1, max_length=1000)


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
