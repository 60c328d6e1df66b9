"""The federation service fuzzed over gRPC (hypothesis, bounded): messages built from the
protocol's own descriptors, and raw bytes that are no message at all, on every method, both
before a site joins and inside a joined site's session. No call may end in an unhandled
server error (UNKNOWN or INTERNAL, other than gRPC's own "cannot parse"); afterwards the
server runs a federated run to its end and restarts on its state."""

from __future__ import annotations

import itertools
import queue
import signal
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quorum.identity import load_private, public_bytes, sign_join
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from tests.e2e.cli import TASK, Deployment, run_settings
from tests.protobufs import messages

pytestmark = pytest.mark.slow

EXAMPLES = 40
"""Calls per target: about 300 in all, well inside a minute."""
CALL_S = 3.0
"""Each call's life: a server that waits for more (a session after a bare hello) is cut here."""
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same calls on every run: a failure reproduces
    database=None,
)
SERVICE = "/quorum.v1.Federation/"
_UNDECODABLE = ("Error parsing message", "Exception deserializing request")


def _ended_cleanly(call: Callable[[], Iterator[Any]]) -> None:
    """Drains a call; a status the server chose is fine, an unhandled error is not."""
    try:
        for _ in call():
            pass
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            # gRPC's own refusal of bytes that are no message of the method's type (before
            # any of Quorum's code runs) is the one server error that is an answer.
            assert any(s in details for s in _UNDECODABLE), details


def _session_after_join(
    stub: pb_grpc.FederationStub, key_path: Any, then: list[pb.SiteMessage]
) -> Iterator[pb.ServerMessage]:
    """A session that joins as the registered site, then sends `then` and ends its side."""
    key = load_private(key_path)
    outbox: queue.Queue[pb.SiteMessage | None] = queue.Queue()

    def outgoing() -> Iterator[pb.SiteMessage]:
        while (message := outbox.get()) is not None:
            yield message

    call = stub.Session(outgoing(), timeout=CALL_S)
    outbox.put(pb.SiteMessage(hello=pb.Hello(public_key=public_bytes(key), task=TASK)))
    try:
        challenge = next(call).challenge
        outbox.put(
            pb.SiteMessage(
                join=pb.JoinProof(signature=sign_join(key, challenge.server_id, challenge.nonce))
            )
        )
        assert next(call).WhichOneof("kind") == "welcome"
        for message in then:
            outbox.put(message)
    finally:
        outbox.put(None)
    yield from call


def test_no_grpc_call_gets_an_unhandled_server_error(deployment: Deployment) -> None:
    d = deployment
    d.run = run_settings(rounds=2)
    server = d.start_server()
    fuzz_key = d.keygen_and_add("fuzz")
    channel = grpc.insecure_channel(d.address)
    stub = pb_grpc.FederationStub(channel)
    raw = {
        name: channel.stream_stream(SERVICE + name, lambda b: b, lambda b: b)
        for name in ("Session", "Upload")
    }
    raw_download = channel.unary_stream(SERVICE + "Download", lambda b: b, lambda b: b)
    calls = itertools.count()

    @FUZZ
    @given(st.lists(messages(pb.SiteMessage), max_size=4))
    def session_before_join(sent: list[pb.SiteMessage]) -> None:
        next(calls)
        _ended_cleanly(lambda: stub.Session(iter(sent), timeout=CALL_S))

    @FUZZ
    @given(st.lists(messages(pb.SiteMessage), max_size=4))
    def session_after_join(sent: list[pb.SiteMessage]) -> None:
        next(calls)
        _ended_cleanly(lambda: _session_after_join(stub, fuzz_key, sent))

    @FUZZ
    @given(messages(pb.DownloadRequest))
    def download(request: pb.DownloadRequest) -> None:
        next(calls)
        _ended_cleanly(lambda: stub.Download(request, timeout=CALL_S))

    @FUZZ
    @given(st.lists(messages(pb.UploadMessage), max_size=4))
    def upload(sent: list[pb.UploadMessage]) -> None:
        next(calls)
        _ended_cleanly(lambda: stub.Upload(iter(sent), timeout=CALL_S))

    @FUZZ
    @given(st.sampled_from(["Session", "Upload", "Download"]), st.lists(st.binary(), max_size=3))
    def raw_bytes(method: str, frames: list[bytes]) -> None:
        next(calls)
        if method == "Download":
            _ended_cleanly(lambda: raw_download(frames[0] if frames else b"", timeout=CALL_S))
        else:
            _ended_cleanly(lambda: raw[method](iter(frames), timeout=CALL_S))

    try:
        for target in (session_before_join, session_after_join, download, upload, raw_bytes):
            target()
    finally:
        channel.close()
    assert next(calls) >= 4 * EXAMPLES
    assert server.alive(), server.log_tail(40)
    assert "Traceback" not in server.log_path.read_text(), server.log_tail(60)

    # The federation still works, and the state the fuzz left restarts.
    d.start_site("a", "delta=1.0,n=1")
    d.start_site("b", "delta=3.0,n=3")
    run = d.wait_run(timeout=90)
    assert run["rounds_completed"] == 2
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(30)
    d.start_server()
    assert d.get(f"/api/v1/runs/{run['id']}")["status"] == "completed"
    assert d.get("/api/v1/health")["status"] == "ok"
