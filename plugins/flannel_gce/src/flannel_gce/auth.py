"""Credentials for the Compute API, through google-auth.

With ``GOOGLE_APPLICATION_CREDENTIALS`` set, Application Default Credentials (a key file,
workload identity). Otherwise the instance's service account, with tokens from the same
metadata server we read our identity from: google-auth's own metadata client only honours
``GCE_METADATA_HOST``, so ours keeps one overridable endpoint for everything.
google-auth is imported lazily.
"""

from __future__ import annotations

import os
from typing import Any

from flannel.backend import BackendError
from flannel_gce.metadata import MetadataClient

__all__ = ["SCOPE", "authorized_session"]

SCOPE = "https://www.googleapis.com/auth/compute"


def _metadata_credentials(metadata: MetadataClient) -> Any:
    from google.auth import credentials

    class MetadataCredentials(credentials.Credentials):  # type: ignore[misc]
        """Access tokens of the instance's default service account, refreshed on expiry."""

        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]

        def refresh(self, request: Any) -> None:
            self.token, self.expiry = metadata.token()

    return MetadataCredentials()


def authorized_session(metadata: MetadataClient) -> Any:
    """A requests session that adds (and refreshes) the bearer token on each call."""
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import AuthorizedSession

    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        try:
            creds, _ = google.auth.default(scopes=[SCOPE])
        except google.auth.exceptions.GoogleAuthError as exc:
            raise BackendError(
                f"gce: cannot load GOOGLE_APPLICATION_CREDENTIALS "
                f"({os.environ['GOOGLE_APPLICATION_CREDENTIALS']}): {exc}"
            ) from None
    else:
        creds = _metadata_credentials(metadata)
    return AuthorizedSession(creds)  # type: ignore[no-untyped-call]
