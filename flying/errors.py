"""The one table that maps Flying's error codes to gRPC status codes and HTTP statuses."""
from __future__ import annotations

import grpc

from flying_core.errors import FlyingError

# code -> (gRPC status, HTTP status, OpenAI error type)
STATUS_TABLE: dict[str, tuple[grpc.StatusCode, int, str]] = {
    "INVALID_ARGUMENT": (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
    "NOT_FOUND": (grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    "FAILED_PRECONDITION": (grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"),
    "ABORTED": (grpc.StatusCode.ABORTED, 409, "conflict_error"),
    "RESOURCE_EXHAUSTED": (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    "CANCELLED": (grpc.StatusCode.CANCELLED, 499, "cancelled"),
    "UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
    "DEADLINE_EXCEEDED": (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout"),
    "INTERNAL": (grpc.StatusCode.INTERNAL, 500, "server_error"),
}

# how long a client should wait before retrying (HTTP Retry-After; gRPC retry-after trailer)
RETRY_AFTER_S: dict[str, int] = {"RESOURCE_EXHAUSTED": 1, "UNAVAILABLE": 5}

_BY_GRPC = {g: code for code, (g, _, _) in STATUS_TABLE.items()}


def grpc_status(code: str) -> grpc.StatusCode:
    return STATUS_TABLE.get(code, STATUS_TABLE["INTERNAL"])[0]


def http_status(code: str) -> int:
    return STATUS_TABLE.get(code, STATUS_TABLE["INTERNAL"])[1]


def openai_type(code: str) -> str:
    return STATUS_TABLE.get(code, STATUS_TABLE["INTERNAL"])[2]


def code_of(exc: BaseException) -> str:
    """The code of a FlyingError, or of a gRPC error coming back from a peer."""
    if isinstance(exc, FlyingError):
        return exc.code
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return _BY_GRPC.get(exc.code(), "INTERNAL")
    return "INTERNAL"


def error_of(code: str, message: str) -> FlyingError:
    """The FlyingError of a code (e.g. a Finished event's), with its message."""
    import flying_core.errors as fe
    cls = next((c for c in vars(fe).values()
                if isinstance(c, type) and issubclass(c, FlyingError) and c.code == code),
               FlyingError)
    err = cls(message or code)
    err.code = code
    return err


def error_from_grpc(exc: grpc.RpcError) -> FlyingError:
    """Turn a peer's gRPC error back into the FlyingError of the same code."""
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_of(code_of(exc), details)


def retry_after(code: str) -> int | None:
    return RETRY_AFTER_S.get(code)


async def abort(context, e: FlyingError) -> None:
    """End a grpc.aio call with the error's status (and a retry-after trailer when it has one)."""
    wait = retry_after(e.code)
    trailer = (("retry-after", str(wait)),) if wait is not None else ()
    await context.abort(grpc_status(e.code), e.message, trailing_metadata=trailer)


def unary_errors(handler):
    """Decorate a grpc.aio unary handler: a FlyingError ends the call with its status."""
    import functools

    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            return await handler(self, request, context)
        except FlyingError as e:
            await abort(context, e)
    return wrapper
