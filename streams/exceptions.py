"""Errors raised by the ingestion side: settings, schemas, the producer client."""


class SettingsError(ValueError):
    """An environment variable has a value that cannot be used; the message names it."""


class InvalidEvent(ValueError):
    """An event that breaks the contract; `reason` is what the dead-letter record says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
