"""Payloads of signed model delivery: the hub's desired state and the model part of a device's
reported state. Desired state is a hint (DESIGN: never trusted for model integrity): the
appliance resolves the named target through TUF and verifies every byte against it."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.osupdate import DesiredOs

_TOKEN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$"

#: Refusals about the signed bytes themselves: the appliance never tries the same target again,
#: and the hub counts the device as refused for that version instead of waiting for it.
FINAL_REFUSALS = frozenset(
    {"smoke-test", "bad-artifact", "health-gate", "downgrade", "target-mismatch",
     "interrupted-probation", "rolled-back", "wrong-architecture"}
)


class DesiredModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=_TOKEN)
    version: str = Field(pattern=_TOKEN)
    target: str = Field(pattern=r"^models/[A-Za-z0-9._/+-]{1,300}$")
    # True when the operator chose exactly this version (``==X``): a downgrade is allowed.
    pinned: bool = False


class DesiredState(BaseModel):
    """Retained on ``spoke/v1/{device}/desired``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    protocol: Literal[1] = 1
    model: DesiredModel | None = None
    os: DesiredOs | None = None
    rule: str | None = Field(None, max_length=200)
    note: str | None = Field(None, max_length=300)
    os_note: str | None = Field(None, max_length=300)
