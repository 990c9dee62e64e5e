"""What the daemon and the hub share: config, errors, topics, payloads, identity, storage."""

__version__ = "0.1.0"
