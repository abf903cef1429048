"""What can go wrong with a request, in the client's terms; the HTTP status is `service.errors`'s.

The prediction path and the task intake raise these, so they stay free of HTTP: each problem
names the field at fault (None: the request as a whole), says what is wrong, and, when waiting
helps, after how many seconds a retry may succeed.
"""

from __future__ import annotations


class Problem(Exception):
    def __init__(self, field: str | None, message: str, retry_after: int | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
        self.retry_after = retry_after


class ServiceUnavailable(Problem):
    """Not now (no model yet, shutting down, the upload memory budget in use); retry later."""


class NotServed(Problem):
    """The request names a model or version this service does not serve."""


class UnknownTask(Problem):
    """The request names a task the served version has no head for."""


class NameTaken(Problem):
    """A new task's name is being submitted right now, or is learned or stored already."""


class InvalidValue(Problem):
    """A value the request gives is well-formed but cannot be used."""


class TooLarge(Problem):
    """The request holds more than this service takes at once; a smaller one would be served."""
