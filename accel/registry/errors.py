"""Precise exceptions for registry traffic.

Every message names the registry and what was being done; none ever carries a credential or token.
"""

from __future__ import annotations

import httpx

from accel.errors import AccelError


class RegistryError(AccelError):
    """A registry refused or failed a request. `status` is the HTTP status, if there was a response."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        registry: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.registry = registry
        self.code = code  # the distribution error code (MANIFEST_UNKNOWN, DIGEST_INVALID, ...) if sent


class AuthenticationError(RegistryError):
    """401 after every credential we have was tried (or none were configured)."""


class Forbidden(RegistryError):
    """403: authenticated, but not allowed to do this."""


class NotFound(RegistryError):
    """404: the manifest, blob, repository or upload is unknown."""


class TransientRegistryError(RegistryError):
    """5xx, 429, timeouts and dropped connections: worth retrying later."""

    retry_after: float | None = None  # seconds, from a Retry-After header


class BlobSizeMismatch(RegistryError):
    """A blob's byte count differs from its descriptor's `size` after a complete read: permanent."""


class RegistryUnreachable(RegistryError):
    """No connection could be made: refused, unknown host (DNS) or a TLS certificate that does not verify.
    Permanent: retrying in seconds does not cure a wrong address or certificate, and the conversion fails
    at once with this one line (a later request retries the whole conversion)."""


# Distribution error codes that say the request itself was malformed. Some registries answer them with a
# 5xx; retrying the same request cannot help.
INPUT_ERROR_CODES = frozenset(
    {"NAME_INVALID", "TAG_INVALID", "DIGEST_INVALID", "MANIFEST_INVALID", "SIZE_INVALID", "UNSUPPORTED"}
)


# 501 and 505 say "this server will never do that": retrying cannot help.
_PERMANENT_5XX = frozenset({501, 505})


def is_transient_status(status: int) -> bool:
    return status in (408, 429) or (status >= 500 and status not in _PERMANENT_5XX)


def is_transient(exc: BaseException) -> bool:
    """True for failures a later retry may cure: 5xx (not to malformed input), 429, resets, timeouts,
    truncated bodies. Permanent: 4xx, TLS verification, DNS failure, refused connections, digest or size
    mismatches after a complete read, format refusals, config errors."""
    if isinstance(exc, TransientRegistryError):
        return True
    # Raw transport failures should have been wrapped, but be generous to callers using httpx directly.
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.ConnectError)
