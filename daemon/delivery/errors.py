"""Why a model was refused, as a short code the hub can count plus a sentence for a person."""

from appliance.errors import DataError, LinkError


class ModelRefused(DataError):
    """The repository, the download or the model itself is bad: not retried for this target."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class DeliveryInterrupted(LinkError):
    """The hub went away, the deadline passed or the disk filled up: retried later."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
