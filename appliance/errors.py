"""The error hierarchy: "the link failed" versus "the data is bad".

Callers retry a LinkError (with backoff) and never retry a DataError: bad data stays bad.
Third-party errors are converted at the boundary with ``raise ... from exc``.
"""


class SpokeError(Exception):
    """Base of every error Spoke raises on purpose. Its message is meant for a person."""


class LinkError(SpokeError):
    """A connection, broker or network failure: worth retrying later."""


class DataError(SpokeError):
    """Input that is wrong and will stay wrong: refuse it with a clear reason."""


class ConfigError(DataError):
    """A config file or setting is invalid."""


class BundleError(DataError):
    """A provisioning bundle is missing, unsigned, altered, expired or otherwise unusable."""


class EnrollmentRefused(DataError):
    """The hub refused an enrollment request; the message says why."""


class IdentityError(DataError):
    """A certificate, key or CSR is malformed or does not match."""
