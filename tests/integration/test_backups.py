"""Online backups of the state store on the server's schedule ([server] backup_every_s)."""

from __future__ import annotations

import asyncio
import pathlib

from quorum.server.backups import PATTERN
from quorum.server.store import Store
from tests.integration.harness import federation, run_config, wait_for


def _backup_holding(folder: pathlib.Path, run_id: str) -> pathlib.Path | None:
    """The newest backup in `folder` in which the run is completed, if there is one."""
    for path in sorted(folder.glob(PATTERN), key=lambda p: p.stat().st_mtime_ns, reverse=True):
        store = Store(path)
        try:
            if store.quick_check() is None and store.run(run_id).status == "completed":
                return path
        finally:
            store.close()
    return None


def test_the_server_backs_its_store_up_on_a_schedule_and_keeps_the_newest(
    tmp_path: pathlib.Path,
) -> None:
    folder = tmp_path / "backups"

    async def scenario() -> None:
        async with federation(
            tmp_path, [run_config(rounds=2)], backup_every_s=0.2, backup_dir=folder, keep_backups=2
        ) as fed:
            fed.add_site("a", "delta=1.0,n=1")
            fed.add_site("b", "delta=3.0,n=3")
            run = await fed.wait_run("completed")

            async def backed_up() -> pathlib.Path | None:
                return await asyncio.to_thread(_backup_holding, folder, run["id"])

            first = await wait_for(backed_up, 30)
            # Later ticks replace the oldest: never more than keep_backups, and `first` goes.
            await wait_for(lambda: asyncio.to_thread(lambda: not first.exists()), 30)
            assert len(list(folder.glob(PATTERN))) <= 2
            assert not list(folder.glob(".*partial"))  # each backup renamed into place whole

    asyncio.run(scenario())
