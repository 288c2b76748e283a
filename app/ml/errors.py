"""Errors raised by the ML layer; callers map them to HTTP or job failures."""


class DataError(ValueError):
    """Bad data, with a message written for the person who sent it."""

    def __init__(self, message: str, code: str = "invalid_data") -> None:
        super().__init__(message)
        self.code = code
