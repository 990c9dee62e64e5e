"""The model repository's public files in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO,
Ceph RGW...): ``[repository] url = "s3://bucket/prefix"`` with ``endpoint`` for a store that is
not AWS. Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, a profile, an instance role); they are never in hub.toml.

TUF's consistent snapshots make every file but ``metadata/timestamp.json`` and
``metadata/root.json`` immutable once written (hash- or version-named), so a CDN in front of
the bucket may cache everything else for ever.
"""

from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from appliance.errors import ConfigError, LinkError
from provisioning.repository import safe_key

MUTABLE = ("metadata/timestamp.json", "metadata/root.json")


class S3Storage:
    """``Storage`` (see provisioning.repository) over one bucket and key prefix."""

    def __init__(self, url: str, endpoint: str = "", region: str = "us-east-1") -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"not an s3 url: {url!r} (use s3://BUCKET/PREFIX)")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          s3={"addressing_style": "path"}),
        )

    def _key(self, rel: str) -> str:
        if not safe_key(rel):
            raise ValueError(f"not a repository path: {rel!r}")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def read(self, rel: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(rel))
            data: bytes = answer["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise LinkError(f"s3://{self.bucket}/{self._key(rel)}: {exc}") from exc
        except BotoCoreError as exc:
            raise LinkError(f"the model store at s3://{self.bucket} is unreachable: {exc}") from exc
        return data

    def write(self, rel: str, data: bytes) -> None:
        """One PUT: S3 makes the object visible whole or not at all (no partial file)."""
        cache = "no-cache" if rel in MUTABLE else "public, max-age=31536000, immutable"
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(rel), Body=data, CacheControl=cache
            )
        except (ClientError, BotoCoreError) as exc:
            raise LinkError(f"cannot write s3://{self.bucket}/{self._key(rel)}: {exc}") from exc
