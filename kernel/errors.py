"""Application errors with stable codes; HTTP layers render them as RFC 9457 problem details."""

from __future__ import annotations

from typing import Any, ClassVar


class ConfigError(Exception):
    """A setting has a value Livora cannot start with. Names the environment variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


class AppError(Exception):
    """Base of every error a service raises on purpose.

    ``code`` is a stable snake_case identifier clients may branch on; ``detail`` is for people.
    """

    status_code: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    default_code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.errors = errors
        self.headers = headers or {}


class ValidationFailed(AppError):
    status_code = 400
    title = "Invalid request"
    default_code = "validation_failed"


class NotAuthenticated(AppError):
    status_code = 401
    title = "Authentication required"
    default_code = "not_authenticated"


class PermissionDenied(AppError):
    status_code = 403
    title = "Permission denied"
    default_code = "permission_denied"


class NotFound(AppError):
    status_code = 404
    title = "Not found"
    default_code = "not_found"


class Gone(AppError):
    status_code = 410
    title = "Gone"
    default_code = "gone"


class Conflict(AppError):
    status_code = 409
    title = "Conflict"
    default_code = "conflict"


class TooLarge(AppError):
    status_code = 413
    title = "Content too large"
    default_code = "too_large"


class Unprocessable(AppError):
    status_code = 422
    title = "Unprocessable request"
    default_code = "unprocessable"


class QuotaExceeded(AppError):
    """Too many requests; ``retry_after`` seconds become the ``Retry-After`` header."""

    status_code = 429
    title = "Too many requests"
    default_code = "quota_exceeded"

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)


class Unavailable(AppError):
    """A dependency is down; the request may be retried."""

    status_code = 503
    title = "Service unavailable"
    default_code = "unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(detail, code=code, headers={"Retry-After": str(retry_after)})
