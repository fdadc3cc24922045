"""Status codes for our exceptions, both ways, with ``ErrorInfo`` details in trailing metadata.

Server side: ``guard`` wraps every RPC so that (1) the caller's certificate role is checked,
(2) a ``TrustspaceError`` becomes a status code plus an ``ErrorInfo`` (node, rule, message) and
(3) any other exception becomes ``INTERNAL`` with a safe message and an incident id, logged
without request payloads (which may carry secret shares). Client side: ``to_exception``
turns a failed call back into the matching ``TrustspaceError`` subclass.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import grpc

from trustspace import errors
from trustspace._cancel import CancelScope, cancel_scope
from trustspace.errors import (
    AuthenticationError,
    CryptoError,
    NodeError,
    PolicyError,
    ProtocolError,
    ThresholdError,
    TrustspaceError,
)
from trustspace.proto.v1 import common_pb2
from trustspace.transport.ca import Identity, identity_from_pem

log = logging.getLogger("trustspace.transport")
ERROR_KEY = "trustspace-error-bin"
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def status_of(exc: TrustspaceError) -> grpc.StatusCode:
    """The gRPC status code for one of our exceptions."""
    if isinstance(exc, PolicyError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, AuthenticationError):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(exc, NodeError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, ThresholdError):
        return grpc.StatusCode.FAILED_PRECONDITION  # too few nodes: the request itself is fine
    if isinstance(exc, ProtocolError):
        # malformed, out of range, replayed or out of order: the caller's message is at fault
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, ValueError | CryptoError | OverflowError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.FAILED_PRECONDITION


def peer_identity(context: grpc.ServicerContext) -> Identity:
    """The identity in the caller's (already CA-verified) client certificate."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        raise AuthenticationError("the caller presented no client certificate")
    return identity_from_pem(pems[0])


def _abort(
    context: grpc.ServicerContext, code: grpc.StatusCode, info: common_pb2.ErrorInfo
) -> NoReturn:
    context.set_trailing_metadata(((ERROR_KEY, info.SerializeToString()),))
    context.abort(code, info.message)
    raise AssertionError("unreachable")  # context.abort raises


def guard(
    handler: Callable[[Req, Identity], Resp],
    *,
    server_name: str,
    method: str,
    allowed_roles: tuple[str, ...],
) -> Callable[[Req, grpc.ServicerContext], Resp]:
    """Wrap ``handler(request, caller)`` as a gRPC method with role check and error mapping."""

    def wrapped(request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            caller = peer_identity(context)
            if caller.role not in allowed_roles:
                # the server's gate reports the refusal (logged, audited, counted)
                log.debug(
                    "%s: refused %s from %s: role %r may not call it",
                    server_name,
                    method,
                    caller.name,
                    caller.role,
                )
                raise AuthenticationError(
                    f"{server_name} refused {method} from {caller}: only "
                    f"{' or '.join(allowed_roles)} certificates may call it"
                )
            # what the call has running at a data source stops when the call ends early
            scope = CancelScope()
            context.add_callback(scope.cancel)
            with cancel_scope(scope):
                return handler(request, caller)
        except TrustspaceError as exc:
            info = common_pb2.ErrorInfo(
                node=str(getattr(exc, "node", "") or server_name),
                rule=str(getattr(exc, "rule", "") or ""),
                message=str(exc),
                kind=_public_kind(exc),
            )
            _abort(context, status_of(exc), info)
        except Exception:
            incident = secrets.token_hex(4)
            # the traceback names code locations only; payloads (secret shares) are not logged
            log.exception("%s: internal error in %s (incident %s)", server_name, method, incident)
            info = common_pb2.ErrorInfo(
                node=server_name,
                message=f"internal error at {server_name} in {method} (incident {incident}); "
                "see that server's log",
                kind="NodeError",
            )
            _abort(context, grpc.StatusCode.INTERNAL, info)

    wrapped.__name__ = method
    return wrapped


def _public_kind(exc: TrustspaceError) -> str:
    """The nearest class of ``exc`` defined in ``trustspace.errors`` (what the client rebuilds)."""
    for cls in type(exc).__mro__:
        if getattr(errors, cls.__name__, None) is cls:
            return str(cls.__name__)
    return "TrustspaceError"


def error_info(err: grpc.RpcError) -> common_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` a trustspace server attached to a failed call, if any."""
    trailing: Any = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_KEY and isinstance(value, bytes):
            info = common_pb2.ErrorInfo()
            try:
                info.ParseFromString(value)
            except Exception:
                return None
            return info
    return None


def _kind(name: str) -> type[TrustspaceError]:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, TrustspaceError):
        return cls
    return NodeError


def to_exception(err: grpc.RpcError, *, peer: str, what: str) -> TrustspaceError:
    """Translate a failed call to ``peer`` doing ``what`` into one of our exceptions."""
    info = error_info(err)
    code = err.code() if hasattr(err, "code") else None
    if info is not None and info.message:
        exc = _kind(info.kind)(info.message)
        exc.node = info.node or peer  # type: ignore[attr-defined]
        exc.rule = info.rule  # type: ignore[attr-defined]
        return exc
    details = err.details() if hasattr(err, "details") else str(err)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodeError(f"{peer} did not answer {what} before the deadline")
    if code == grpc.StatusCode.UNAVAILABLE:
        return NodeError(f"{peer} is unavailable for {what}: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        # every method of our services exists: the peer runs another (older) trustspace
        return NodeError(
            f"{peer} does not implement {what} (UNIMPLEMENTED): it is probably running a "
            "different trustspace version; upgrade it to the same version as this one"
        )
    return NodeError(f"{peer} failed {what}: {code.name if code else 'error'}: {details}")
