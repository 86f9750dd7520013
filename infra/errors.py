"""One exception hierarchy for the service, each class with a stable error code.

The CLI prints `code: message`; adapters translate driver errors into these.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    code = "service_error"

    def __str__(self) -> str:  # pragma: no cover - trivial
        return f"{self.code}: {super().__str__()}"


class NotFound(ServiceError):
    code = "not_found"


class InvalidInput(ServiceError):
    code = "invalid_input"


class InvalidState(ServiceError):
    code = "invalid_state"


class IntegrityMismatch(ServiceError):
    code = "integrity_mismatch"


class ApprovalRequired(ServiceError):
    code = "approval_required"


class PermissionDenied(ServiceError):
    code = "permission_denied"


class StorageError(ServiceError):
    """A storage backend failed (e.g. an S3 error other than a missing key); the message names the cause."""

    code = "storage_error"
