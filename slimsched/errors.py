"""The project's own error types.

Library exceptions are converted into these at the edges (``raise ... from e``) so the core and
the HTTP layer only ever see one vocabulary. ``ApiError`` carries the HTTP status and the stable
machine code that the REST API puts in ``{"Error": code, "Message": message}``.
"""

from __future__ import annotations


class SlimschedError(Exception):
    """Base of every error slimsched raises on purpose."""


class ApiError(SlimschedError):
    """An error with a place in the REST contract: status, stable code, human sentence."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class BadRequest(ApiError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(400, code, message)


class NotFound(ApiError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(404, code, message)


class Conflict(ApiError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(409, code, message)


class Forbidden(ApiError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(403, code, message)


class Unavailable(ApiError):
    def __init__(self, code: str, message: str, retry_after: int = 1) -> None:
        super().__init__(503, code, message, retry_after=retry_after)


class ConfigError(SlimschedError):
    """The job configuration or the settings cannot be used; raised at start-up."""


class KubeError(SlimschedError):
    """A Kubernetes API call failed (converted from the client's exceptions)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
