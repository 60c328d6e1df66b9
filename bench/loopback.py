"""The transfer floor of a round: its bytes moved over loopback gRPC and nothing else.

A bare grpc.aio server (no protobuf schema, no checks, no disk) streams `--bytes` to each of N
fetching processes at once in 2 MiB messages, then takes `--bytes` from each of N pushing
processes at once: the two downloads and two uploads of a sync round at N = 2, with Quorum's
chunk size and channel options, each end its own process as the server and sites are. The floor
is the wall time of the fetches plus that of the pushes, from the first start to the last end.

    python -m bench.loopback --bytes 1000000000 --nodes 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import psutil

from quorum.ports import free_port
from quorum.wire.blobs import CHUNK_BYTES
from quorum.wire.channel import GRPC_OPTIONS

SERVICE = "bench.Loopback"
CHUNK = b"\x5a" * CHUNK_BYTES


async def _fetch(
    request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    left = int(request)
    while left > 0:
        piece = CHUNK if left >= CHUNK_BYTES else CHUNK[:left]
        yield piece
        left -= len(piece)


async def _push(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> bytes:
    total = 0
    async for chunk in requests:
        total += len(chunk)
    return str(total).encode()


async def start(port: int, options: Sequence[tuple[str, int]] = GRPC_OPTIONS) -> grpc.aio.Server:
    """The bare server on 127.0.0.1:`port`, started, built with `options`
    (bench/stream_window.py gives it the federation server's)."""
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Fetch": grpc.unary_stream_rpc_method_handler(_fetch),
                    "Push": grpc.stream_unary_rpc_method_handler(_push),
                },
            )
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def serve(port: int) -> None:
    server = await start(port)
    print("ready", flush=True)
    await server.wait_for_termination()


async def transfer(port: int, kind: str, nbytes: int) -> tuple[float, float, float]:
    """One fetch or push of `nbytes`; returns its (start, end) wall-clock times and the CPU
    seconds this process used between them."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        await channel.channel_ready()
        start, cpu = time.time(), time.process_time()
        if kind == "fetch":
            call = channel.unary_stream(f"/{SERVICE}/Fetch", None, None)
            got = 0
            async for chunk in call(str(nbytes).encode()):
                got += len(chunk)
            assert got == nbytes
        else:

            async def chunks() -> AsyncIterator[bytes]:
                left = nbytes
                while left > 0:
                    piece = CHUNK if left >= CHUNK_BYTES else CHUNK[:left]
                    yield piece
                    left -= len(piece)

            reply = await channel.stream_unary(f"/{SERVICE}/Push", None, None)(chunks())
            assert int(reply) == nbytes
        return start, time.time(), time.process_time() - cpu


def _concurrent(
    port: int, kind: str, nbytes: int, nodes: int, timeout: float
) -> tuple[float, float]:
    """Runs `nodes` transfer processes at once; the span from the first start to the last end,
    and the CPU seconds they used in their transfers."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.loopback",
                "--client",
                kind,
                "--port",
                str(port),
                "--bytes",
                str(nbytes),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(nodes)
    ]
    spans = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            if proc.returncode:
                raise RuntimeError(f"loopback {kind} exited {proc.returncode}")
            spans.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    span = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return float(span), float(sum(cpu for _, _, cpu in spans))


def floor(nbytes: int, nodes: int, timeout: float = 600.0) -> dict[str, float]:
    """Seconds to fetch `nbytes` to `nodes` processes at once, then to push as much from each,
    and the CPU seconds its processes (the server and the clients, their start-up left out)
    used for it: where the round's processes share the cores, a round takes at least its CPU
    over the cores."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.loopback", "--serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the loopback server did not start")
        serving = psutil.Process(server.pid)
        before = serving.cpu_times()
        fetch, fetch_cpu = _concurrent(port, "fetch", nbytes, nodes, timeout)
        push, push_cpu = _concurrent(port, "push", nbytes, nodes, timeout)
        after = serving.cpu_times()
    finally:
        server.kill()
        server.wait()
    served = after.user + after.system - before.user - before.system
    cpu = served + fetch_cpu + push_cpu
    return {"fetch_s": fetch, "push_s": push, "floor_s": fetch + push, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=CHUNK_BYTES * 100)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=("fetch", "push"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.port))
    elif args.client:
        print(json.dumps(asyncio.run(transfer(args.port, args.client, args.bytes))))
    else:
        print(json.dumps(floor(args.bytes, args.nodes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
