"""Errors raised when a query cannot be answered as asked."""


class QueryError(ValueError):
    """A query parameter is unusable; `param` names it, the message says why (the API's 400 body)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
