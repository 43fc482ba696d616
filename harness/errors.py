"""The one error type the platform's operations raise when they refuse an input."""


class Refused(Exception):
    """An operation was refused; the message names the culprit and, where useful, what to do.

    The REST API turns it into a 4xx answer and the CLI into one line on stderr with exit 1.
    """

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class NotFound(Refused):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


class Conflict(Refused):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)
