"""The one error of the service: :class:`ServiceError`, a refused request with its HTTP code.

Every refusal -- a bad upload (:mod:`tripletface.serve.uploads`), no face in a batch
(:mod:`tripletface.serve.batcher`), a bad form field (:mod:`tripletface.serve.app`) -- is a
JSON body ``{"error": {"status": ..., "message": ..., "field": ...}}``.
"""

from __future__ import annotations

__all__ = ["ServiceError"]


class ServiceError(Exception):
    """A request the service refuses: HTTP ``code``, machine-readable ``status``, one-line ``message``."""

    def __init__(self, code: int, status: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code = int(code)
        self.status = status
        self.message = message
        self.field = field

    def body(self) -> dict:
        return {"error": {"status": self.status, "message": self.message, "field": self.field}}
