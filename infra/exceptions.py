"""Errors raised while fetching or starting local infrastructure."""


class InfraError(RuntimeError):
    """A local component could not be installed or started; the message says why and what to check."""
