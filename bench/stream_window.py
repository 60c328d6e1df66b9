"""The federation server's stream window (`[server] stream_window_kb`): upload speed over a
link with a round trip, against the server's memory with many sites uploading at once.

Speed: a grpc.aio server built with `channel.server_options(KB)` takes `--megabytes` in 2 MiB
messages (Quorum's chunk size) from one client through a proxy that holds every byte `RTT / 2`
in each direction, as a far site's link would (no bandwidth limit: the window is the bound).
Memory: a Quorum run of `round_time.py`'s workload (`--params`, 2 and `--nodes` sites) with
that window, its server's peak RSS and its median round. KB = 0 is gRPC's own bandwidth-delay
probing, which Flower's servers use.

    python bench/stream_window.py                         # windows 64 1024 4096 8192 16384 0
    python bench/stream_window.py --windows 64 0 --rtt-ms 50 --no-memory
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench import loopback, quorum_side
from bench.common import RESULTS_DIR, RunSpec, quorum_revision, stop_on_sigterm, write_json
from bench.loopback import CHUNK, SERVICE
from quorum.ports import free_port
from quorum.wire.channel import GRPC_OPTIONS, server_options


async def _carry(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float
) -> None:
    """Copies `reader` to `writer`, each piece `delay_s` after it arrived, in order."""
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            at, data = await due.get()
            if not data:
                writer.close()
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(256 * 1024):
            due.put_nowait((time.monotonic() + delay_s, data))
    finally:
        due.put_nowait((0.0, b""))
        await asyncio.wait([delivering])


@contextlib.asynccontextmanager
async def _delayed_link(listen: int, target: int, delay_s: float) -> AsyncIterator[None]:
    """A proxy on `listen` to `target` for as long as the context lasts."""
    carrying: set[asyncio.Task[Any]] = set()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        far_reader, far_writer = await asyncio.open_connection("127.0.0.1", target)
        for task in (
            asyncio.create_task(_carry(reader, far_writer, delay_s)),
            asyncio.create_task(_carry(far_reader, writer, delay_s)),
        ):
            carrying.add(task)

    proxy = await asyncio.start_server(connect, "127.0.0.1", listen)
    try:
        yield
    finally:
        proxy.close()
        for task in carrying:
            task.cancel()
        await asyncio.gather(*carrying, return_exceptions=True)


async def upload_speed(window_kb: int, rtt_ms: float, megabytes: int) -> float:
    """MB/s of one upload of `megabytes` through a link of `rtt_ms`, to a server whose stream
    window is `window_kb` (0: probed)."""
    port, link_port = free_port(), free_port()
    server = await loopback.start(port, server_options(window_kb))
    chunks = max(1, megabytes * 1_000_000 // len(CHUNK))

    async def pieces(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield CHUNK

    try:
        async with (
            _delayed_link(link_port, port, rtt_ms / 2000),
            grpc.aio.insecure_channel(f"127.0.0.1:{link_port}", options=GRPC_OPTIONS) as channel,
        ):
            call = channel.stream_unary(f"/{SERVICE}/Push", None, None)
            await call(pieces(2))  # the connection made and its windows settled first
            started = time.perf_counter()
            total = int(await call(pieces(chunks)))
            elapsed = time.perf_counter() - started
    finally:
        await server.stop(None)
    assert total == chunks * len(CHUNK), total
    return total / 1e6 / elapsed


def quorum_run(window_kb: int, params: int, nodes: int, rounds: int) -> dict[str, Any]:
    """The server's peak RSS (MB) and the median round (s) of a Quorum run with that window."""
    spec = RunSpec(params, nodes, rounds, 1, 600.0, 0.25)
    options = quorum_side.Options(
        variant=f"window-{window_kb}", server={"stream_window_kb": window_kb}
    )
    result = quorum_side.run(spec, options)
    if result.get("errors"):
        print(f"# errors at N = {nodes}, window {window_kb}: {result['errors']}", flush=True)
    return {
        "peak_mb": result.get("server_peak_rss_mb"),
        "round_s": result.get("round_time_stats", {}).get("median"),
    }


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--windows", type=int, nargs="+", default=[64, 1024, 4096, 8192, 16384, 0])
    ap.add_argument("--rtt-ms", type=float, nargs="+", default=[0, 10, 50, 100])
    ap.add_argument("--megabytes", type=int, default=128, help="per upload")
    ap.add_argument("--params", type=int, default=10_000_000)
    ap.add_argument("--nodes", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--no-memory", action="store_true", help="upload speeds only")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for kb in args.windows:
        row: dict[str, Any] = {"window_kb": kb, "mb_per_s": {}}
        for rtt in args.rtt_ms:
            row["mb_per_s"][rtt] = asyncio.run(upload_speed(kb, rtt, args.megabytes))
        if not args.no_memory:
            row["runs"] = {n: quorum_run(kb, args.params, n, args.rounds) for n in (2, args.nodes)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_json(
        RESULTS_DIR / "stream_window.json",
        {"revision": quorum_revision(), "args": vars(args), "rows": rows},
    )
    head = "| window | " + " | ".join(f"MB/s at {r:g} ms RTT" for r in args.rtt_ms)
    rule = "|---:|" + "---:|" * len(args.rtt_ms)
    if not args.no_memory:
        head += f" | server peak N = 2 (MB) | N = {args.nodes} (MB) | ratio | round N = 2 (s)"
        head += f" | N = {args.nodes} (s)"
        rule += "---:|---:|---:|---:|---:|"
    print(head + " |")
    print(rule)
    for row in rows:
        name = "probed (0)" if row["window_kb"] == 0 else f"{row['window_kb']} KiB"
        cells = [f"{row['mb_per_s'][r]:.1f}" for r in args.rtt_ms]
        if "runs" in row:
            few, many = row["runs"][2], row["runs"][args.nodes]
            low, high = few["peak_mb"], many["peak_mb"]
            ratio = f"{high / low:.2f}" if low and high else "—"
            cells += [f"{low or 0:.0f}", f"{high or 0:.0f}", ratio]
            cells += [f"{run['round_s'] or 0:.2f}" for run in (few, many)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
