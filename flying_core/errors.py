"""Errors the worker group raises, each tagged with a status code name.

Pure Python: the one table that turns a code into a gRPC status and an HTTP status lives in
flying/errors.py, at the edge.
"""
from __future__ import annotations


class FlyingError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(FlyingError):
    """Malformed input: empty prompt, too long, bad sampling values."""
    code = "INVALID_ARGUMENT"


class ResourceExhausted(FlyingError):
    """The queue is full."""
    code = "RESOURCE_EXHAUSTED"


class Unavailable(FlyingError):
    """Not ready, draining, a worker died, no backend."""
    code = "UNAVAILABLE"


class DeadlineExceeded(FlyingError):
    code = "DEADLINE_EXCEEDED"


class FailedPrecondition(FlyingError):
    """A layout the workers, the model or the topology cannot form."""
    code = "FAILED_PRECONDITION"


class Aborted(FlyingError):
    """A reconfigure lost to a concurrent one."""
    code = "ABORTED"


class NotFound(FlyingError):
    code = "NOT_FOUND"


class Internal(FlyingError):
    code = "INTERNAL"
