"""The one exception tree of Vox.

    VoxError
    ├── ConfigError            bad configuration; the CLI exits with code 2
    ├── StorageError           the Store or its Engine failed
    │   ├── SchemaError        the database schema is newer than this daemon knows, or a migration failed
    │   ├── IntegrityError     a uniqueness / foreign-key constraint was violated
    │   └── BackupError        vox backup / vox restore refused or failed
    ├── BrokerError            the pub/sub backend failed
    │   └── SubscriberLagged   a subscriber fell behind its bounded buffer and was cut off
    ├── BlobError              the blob store failed
    │   └── BlobNotFound
    └── APIError               a request-level error with an HTTP status and a protocol error code
        ├── ValidationError    400 validation_error (with per-field reasons)
        ├── Unauthorized       401
        ├── Forbidden          403
        │   └── MissingPermission  403 missing_permission (names the permission bit)
        ├── NotFound           404
        ├── MethodNotAllowed   405
        ├── Conflict           409
        ├── PayloadTooLarge    413
        ├── UnsupportedMediaType 415
        ├── RateLimited        429 (with retry_after_ms)
        ├── FederationAuthError   401 federation_unauthorized (with the reason)
        ├── FederationForbidden   403 federation_forbidden (policy refused the peer)
        ├── FederationDisabled    404 federation_disabled (no server_name configured)
        ├── PeerUnavailable       502 peer_unavailable (a peer cannot be found or reached)
        └── PeerError             502 peer_error (a peer answered with an error or garbage)

Services raise these; transports turn APIError into the JSON error shape of the wire contract
(protocol.md section 1) and anything else into a logged 500 with no internals in the body.
"""

from __future__ import annotations

from typing import Any


class VoxError(Exception):
    """Base class of every error Vox raises on purpose."""


class ConfigError(VoxError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key {key!r}: {problem}")
        self.key = key
        self.problem = problem


class StorageError(VoxError):
    pass


class SchemaError(StorageError):
    pass


class IntegrityError(StorageError):
    pass


class BackupError(StorageError):
    """``vox backup`` / ``vox restore`` could not finish; nothing was left half-written."""


class BrokerError(VoxError):
    pass


class SubscriberLagged(BrokerError):
    """The subscriber's bounded buffer overflowed; publishers were not blocked, this subscriber was cut."""


class BlobError(VoxError):
    pass


class BlobNotFound(BlobError):
    pass


class APIError(VoxError):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra: dict[str, Any] = extra
        # Response headers that belong with this error (e.g. rate-limit state on a 429).
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update(self.extra)
        return {"error": error}


class ValidationError(APIError):
    status = 400
    code = "validation_error"

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message, fields=fields or {})


class Unauthorized(APIError):
    status = 401
    code = "unauthorized"


class Forbidden(APIError):
    status = 403
    code = "forbidden"


class MissingPermission(Forbidden):
    """The caller is a member but lacks a permission bit; the body names it (protocol.md section 1)."""

    code = "missing_permission"

    def __init__(self, permission: str, message: str | None = None) -> None:
        super().__init__(message or f"missing permission {permission}", missing_permission=permission)
        self.permission = permission


class NotFound(APIError):
    status = 404
    code = "not_found"


class MethodNotAllowed(APIError):
    status = 405
    code = "method_not_allowed"


class Conflict(APIError):
    status = 409
    code = "conflict"


class PayloadTooLarge(APIError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(APIError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(APIError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.retry_after_ms = retry_after_ms


class FederationAuthError(Unauthorized):
    """A server-to-server request or a voucher failed verification; ``reason`` says which check."""

    code = "federation_unauthorized"

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason.replace("_", " "), reason=reason)
        self.reason = reason


class FederationForbidden(Forbidden):
    code = "federation_forbidden"


class FederationDisabled(NotFound):
    code = "federation_disabled"


class PeerUnavailable(APIError):
    """A peer server has no usable address or key, or could not be reached."""

    status = 502
    code = "peer_unavailable"

    def __init__(self, domain: str, message: str) -> None:
        super().__init__(message, domain=domain)
        self.domain = domain


class PeerError(APIError):
    """A peer answered a federation request with an error status or an unreadable body.

    ``peer_status`` and ``peer_code`` are what the peer said (0 and ``garbage`` when its answer
    was not JSON, ``unknown`` when it was JSON without the error shape); the local client sees
    502 ``peer_error``.
    """

    status = 502
    code = "peer_error"

    def __init__(self, status: int, code: str, message: str = "peer server refused the request") -> None:
        super().__init__(message, peer_status=status, peer_code=code)
        self.peer_status = status
        self.peer_code = code
