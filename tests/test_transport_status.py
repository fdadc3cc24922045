"""Client-side mapping of gRPC statuses that carry no trustspace ErrorInfo."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from trustspace.errors import NodeError
from trustspace.transport.status import to_exception


def test_a_peer_answering_unimplemented_is_a_node_error_naming_it() -> None:
    """A real gRPC server without our services answers UNIMPLEMENTED (e.g. another version)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/trustspace.proto.v1.Node/Describe")
            with pytest.raises(grpc.RpcError) as info:
                call(b"", timeout=10)
    finally:
        server.stop(0)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    exc = to_exception(info.value, peer="org-a", what="Describe")
    assert type(exc) is NodeError
    assert "org-a does not implement Describe" in str(exc)
    assert "trustspace version" in str(exc)
