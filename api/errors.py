"""The API's error type: a status, a message a user can act on, and the parameter at fault."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, str]:
        out = {"error": self.message}
        if self.param is not None:
            out["parameter"] = self.param
        return out
