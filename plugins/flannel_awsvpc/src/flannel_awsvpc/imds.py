"""Who and where we are, from the EC2 instance metadata service (IMDS).

IMDSv2 first (PUT a session token, then GETs carrying it); IMDSv1 plain GETs when the token
PUT is refused or unanswered (IMDSv1-only instances, hop limit 1 in containers). Stdlib only,
short timeouts: off EC2 nothing answers and the daemon must say so quickly.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from flannel.backend import BackendError

__all__ = ["InstanceIdentity", "MetadataError", "fetch_identity"]

TOKEN_PATH = "/latest/api/token"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
REGION_PATH = "/latest/meta-data/placement/region"
ZONE_PATH = "/latest/meta-data/placement/availability-zone"
TOKEN_TTL = "21600"
TIMEOUT = 1.0
"""Seconds per metadata request (botocore's default too): off EC2 we fail in about 2 s."""


class MetadataError(BackendError):
    """The instance metadata service did not answer or answered nonsense."""


@dataclass(frozen=True)
class InstanceIdentity:
    instance_id: str
    region: str


class _Imds:
    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.token: str | None = None

    def _open(self, request: urllib.request.Request) -> str:
        # No proxies: the metadata service is link-local and a proxy would answer for it.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=self.timeout) as response:
            body: bytes = response.read()
        return body.decode().strip()

    def get_token(self) -> None:
        request = urllib.request.Request(
            self.base_url + TOKEN_PATH,
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL},
        )
        try:
            self.token = self._open(request) or None
        except urllib.error.HTTPError:
            self.token = None  # IMDSv2 not offered: fall back to v1
        except (urllib.error.URLError, OSError):
            self.token = None  # no answer (maybe the hop limit); v1 GET decides

    def get(self, path: str) -> str:
        headers = {"X-aws-ec2-metadata-token": self.token} if self.token else {}
        request = urllib.request.Request(self.base_url + path, headers=headers)
        return self._open(request)


def fetch_identity(base_url: str, timeout: float | None = None) -> InstanceIdentity:
    """Instance ID and region of this instance; raises MetadataError saying what was tried."""
    imds = _Imds(base_url, TIMEOUT if timeout is None else timeout)
    imds.get_token()
    version = "IMDSv2" if imds.token else "IMDSv1"
    try:
        instance_id = imds.get(INSTANCE_ID_PATH)
        try:
            region = imds.get(REGION_PATH)
        except urllib.error.HTTPError:
            zone = imds.get(ZONE_PATH)
            region = zone[:-1] if zone and zone[-1].isalpha() else zone
    except urllib.error.HTTPError as exc:
        hint = (
            "IMDSv2 is required but no token was issued: if flannel runs in a container, "
            "raise the instance's metadata hop limit to 2"
            if exc.code == 401 and not imds.token
            else "check Backend.MetadataEndpoint / FLANNEL_AWS_METADATA_URL"
        )
        raise MetadataError(
            f"aws-vpc: the EC2 metadata service at {imds.base_url} answered {version} GET "
            f"{exc.url} with HTTP {exc.code}; {hint}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MetadataError(
            f"aws-vpc: no EC2 instance metadata service answered at {imds.base_url} "
            f"(tried an IMDSv2 token PUT {TOKEN_PATH} and {version} GET {INSTANCE_ID_PATH}: "
            f"{reason}); run flannel on an EC2 instance, or point Backend.MetadataEndpoint / "
            f"FLANNEL_AWS_METADATA_URL at the metadata service"
        ) from None
    if not instance_id.startswith("i-") or not region:
        raise MetadataError(
            f"aws-vpc: the metadata service at {imds.base_url} gave instance-id "
            f"{instance_id!r} and region {region!r}, which do not look like EC2 values; check "
            f"Backend.MetadataEndpoint / FLANNEL_AWS_METADATA_URL"
        )
    return InstanceIdentity(instance_id=instance_id, region=region)
