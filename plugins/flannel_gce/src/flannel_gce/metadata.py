"""Who and where we are, from the GCE metadata server (``Metadata-Flavor: Google``).

Short timeouts and one attempt: off Google Cloud nothing answers, and the daemon must say so
within seconds instead of hanging on a link-local address.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from flannel.backend import BackendError

__all__ = ["GceIdentity", "MetadataClient", "MetadataError"]

HEADERS = {"Metadata-Flavor": "Google"}
TIMEOUT = (1.0, 3.0)  # connect, read
PATHS = {
    "project": "/project/project-id",
    "zone": "/instance/zone",
    "network": "/instance/network-interfaces/0/network",
    "name": "/instance/name",
}


class MetadataError(BackendError):
    """The metadata server did not answer, or not like a GCE metadata server."""


@dataclass(frozen=True)
class GceIdentity:
    project: str
    zone: str
    network: str
    instance: str


def _basename(value: str) -> str:
    return value.rstrip("/").rsplit("/", 1)[-1]


class MetadataClient:
    def __init__(self, base_url: str) -> None:
        import requests  # lazy: the plugin must load without it

        self.base_url = base_url.rstrip("/")
        self._session = requests.Session()
        self._session.trust_env = False  # never send metadata requests through a proxy

    def get(self, path: str) -> str:
        """The text at ``path``; raises MetadataError naming the URL and what to do."""
        return str(self._get(path).text).strip()

    def get_json(self, path: str) -> Any:
        return self._get(path).json()

    def _get(self, path: str) -> Any:
        import requests

        url = self.base_url + path
        try:
            response = self._session.get(url, headers=HEADERS, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise MetadataError(
                f"gce: no GCE metadata server answered at {self.base_url} (tried GET {url} "
                f"with Metadata-Flavor: Google: {type(exc).__name__}); run flannel on a GCE "
                f"instance, or point Backend.MetadataEndpoint / FLANNEL_GCE_METADATA_URL at "
                f"the metadata server"
            ) from None
        if response.headers.get("Metadata-Flavor") != "Google" or response.status_code != 200:
            flavor = response.headers.get("Metadata-Flavor")
            raise MetadataError(
                f"gce: {url} did not answer like a GCE metadata server (HTTP "
                f"{response.status_code}, Metadata-Flavor {flavor!r}); "
                f"check Backend.MetadataEndpoint / FLANNEL_GCE_METADATA_URL"
            )
        return response

    def identity(self) -> GceIdentity:
        """Project, zone, VPC network and instance name of this instance."""
        values = {key: self.get(path) for key, path in PATHS.items()}
        return GceIdentity(
            project=values["project"],
            zone=_basename(values["zone"]),
            network=_basename(values["network"]),
            instance=values["name"],
        )

    def token(self) -> tuple[str, datetime.datetime]:
        """An access token of the instance's default service account and its expiry (UTC)."""
        doc = self.get_json("/instance/service-accounts/default/token")
        if not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
            raise MetadataError(
                f"gce: the metadata server at {self.base_url} gave no access token; give the "
                f"instance a service account with the compute-rw scope"
            )
        lifetime = float(doc.get("expires_in", 0))
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        return doc["access_token"], now + datetime.timedelta(seconds=lifetime)
