"""A site that reads nothing of its session stream while it sends what earns notices: its
session ends once OUTBOX_LIMIT messages wait for it, and what it sends after is not taken."""

from __future__ import annotations

import asyncio
import pathlib
import queue
import time
from typing import Any

import grpc

from quorum import identity
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.server.sessions import OUTBOX_LIMIT
from tests.integration.harness import TASK, federation, wait_for

SENT = 10 * OUTBOX_LIMIT


def join_and_flood(address: str, key: Any) -> tuple[grpc.Channel, Any, queue.Queue[Any]]:
    # No window probing: the site lets the server send it 64 KiB, then reads nothing.
    channel = grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
    out: queue.Queue[pb.SiteMessage | None] = queue.Queue()
    call = pb_grpc.FederationStub(channel).Session(iter(out.get, None))
    out.put(pb.SiteMessage(hello=pb.Hello(public_key=identity.public_bytes(key), task=TASK)))
    challenge = next(call).challenge
    signature = identity.sign_join(key, challenge.server_id, challenge.nonce)
    out.put(pb.SiteMessage(join=pb.JoinProof(signature=signature)))
    assert next(call).WhichOneof("kind") == "welcome"
    bad = pb.SiteMessage(result=pb.TaskResult(task_id="nope", status=pb.RESULT_STATUS_FAILED))
    for _ in range(SENT):  # each earns a notice; none is read
        out.put(bad)
    return channel, call, out


def test_a_site_that_reads_nothing_loses_its_session_not_the_servers_memory(
    tmp_path: pathlib.Path,
) -> None:
    async def scenario() -> None:
        async with federation(tmp_path, []) as fed:
            key = fed.register("m")
            channel, call, out = await asyncio.to_thread(join_and_flood, fed.address, key)
            try:
                session = fed.services.sessions.by_site("m")
                assert session is not None

                async def ended() -> bool | None:
                    return session.closed or None

                await wait_for(ended, 60)
                # Its queue is let go, and it is disconnected though its stream's writer waits
                # on it (its watchdog did the bookkeeping).
                assert session.outbox.qsize() <= 1  # the end's sentinel
                events = await wait_for(
                    lambda: _disconnected(fed.services.store.events(run_id=None)), 30
                )
                assert [e.fields["site"] for e in events] == ["m"]
                refused = fed.services.store._rows("SELECT COUNT(*) FROM rejections")[0][0]
                assert OUTBOX_LIMIT <= refused < SENT  # what it sent after is not taken
                assert fed.services.sessions.by_site("m") is None
            finally:
                out.put(None)
                call.cancel()
                channel.close()

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 120


async def _disconnected(events: list[Any]) -> list[Any] | None:
    return [e for e in events if e.kind == "site_disconnected"] or None
