"""The API's error type: a status, a message a user can act on, and the parameter at fault.

Bodies follow Django REST framework, as the platform's clients expect: `{"detail": message}`, and for a
bad parameter also `{"<parameter>": [message]}` and `"parameter": <name>`."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"detail": self.message}
        if self.param is not None:
            out[self.param] = [self.message]
            out["parameter"] = self.param
        return out
