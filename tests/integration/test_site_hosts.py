"""Simulation site hosts: many virtual sites in one process against the real server, each with
its own key, session and secrets; fits bounded by the host's slots; a host killed mid-round
costs only its own sites' updates."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import threading

import numpy as np

from quorum import identity
from quorum.sim.host import HostSite, HostSpec, serve, write_spec
from quorum.task import EvalResult, FitResult, JSONConfig
from quorum.wire.blobs import Params
from tests.integration.harness import Federation, federation, run_config, wait_for
from tests.vector_task import VectorSite, VectorTask, expected_fedavg

COUNTING = "tests.integration.test_site_hosts:counting"


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0


class CountingSite:
    """A vector site that records how many fits of its process run at once."""

    def __init__(self, inner: VectorSite, counter: _Counter) -> None:
        self.inner, self.counter = inner, counter

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        with self.counter.lock:
            self.counter.running += 1
            self.counter.most = max(self.counter.most, self.counter.running)
        try:
            return self.inner.fit(params, config)
        finally:
            with self.counter.lock:
                self.counter.running -= 1

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        return self.inner.evaluate(params, config)


class CountingTask(VectorTask):
    def __init__(self) -> None:
        self.counter = _Counter()
        self.built = 0

    def site(self, data: str, device: str, seed: int) -> CountingSite:  # type: ignore[override]
        self.built += 1
        return CountingSite(super().site(data, device, seed), self.counter)


counting = CountingTask()


def host_spec(
    fed: Federation,
    tmp_path: pathlib.Path,
    sites: dict[str, str],
    *,
    host: int = 0,
    task: str = COUNTING,
    slots: int = 2,
    keep: int = 4,
    crash: dict[str, str] | None = None,
) -> HostSpec:
    """A host of `sites` (name: vector data), each registered with a fresh key."""
    out = []
    for name, data in sites.items():
        key = fed.register(name)
        out.append(
            HostSite(
                name=name,
                key=identity.private_bytes(key).hex(),
                data=data,
                crash=(crash or {}).get(name),
            )
        )
    return HostSpec(
        host=host,
        server=fed.address,
        task=task,
        device="cpu",
        seed=0,
        slots=slots,
        keep=keep,
        site_dir=tmp_path / "sites",
        sites=out,
    )


def final_value(fed: Federation, run_id: str, round_no: int) -> np.ndarray:
    model, _ = fed.services.checkpoints.open(run_id, round_no)
    return model.flat()


def test_forty_virtual_sites_of_one_host_are_forty_sites_to_the_server(
    tmp_path: pathlib.Path,
) -> None:
    sites = {f"v{i:02d}": f"delta={0.01 * (i + 1)},n={i + 1},sleep=0.02" for i in range(40)}

    async def scenario() -> None:
        config = run_config(task=COUNTING, rounds=2, min_fit_sites=40, min_available_sites=40)
        async with federation(tmp_path, [config]) as fed:
            stop = asyncio.Event()
            hosting = asyncio.create_task(serve(host_spec(fed, tmp_path, sites), stop))
            run = await fed.wait_run(timeout=120)
            health = await fed.api("/api/v1/health")
            assert health["connected_sites"] == 40  # one session each, on one connection
            want = expected_fedavg(2, [(0.01 * (i + 1), i + 1) for i in range(40)])
            np.testing.assert_allclose(final_value(fed, run["id"], 2), want, rtol=1e-5)
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/2")
            assert len(detail["cohort"]) == 40
            stop.set()
            summary = await asyncio.wait_for(hosting, 30)
            assert summary["crashed"] == [] and summary["failed"] == {}
            # At most `slots` fits at once, and at most `keep` site tasks built at a time.
            assert 1 <= counting.counter.most <= 2
            assert summary["built_at_end"] <= 4
            assert counting.built > 40  # dormant sites' tasks were let go and built again

    asyncio.run(scenario())


def test_secure_aggregation_among_virtual_sites_survives_their_dropouts(
    tmp_path: pathlib.Path,
) -> None:
    """Each virtual site is its own SecAgg+ party: two of one host's sites vanish after
    sending their masked input, and the round still gives the survivors' FedAvg."""
    deltas = {f"s{i}": (0.05 * (i + 1), 10 * (i + 1)) for i in range(8)}
    sites = {name: f"delta={d},n={n}" for name, (d, n) in deltas.items()}

    async def scenario() -> None:
        config = run_config(
            rounds=1,
            min_fit_sites=5,
            min_available_sites=8,
            fraction_evaluate=0.0,
            secagg={
                "enabled": True,
                "threshold": 5,
                "clip_range": 4.0,
                "quantization_bits": 24,
                "stage_timeout_s": 10,
            },
        )
        async with federation(tmp_path, [config]) as fed:
            stop = asyncio.Event()
            spec = host_spec(
                fed,
                tmp_path,
                sites,
                task="tests.vector_task:task",
                crash={"s1": "1:unmask", "s6": "1:unmask"},
            )
            hosting = asyncio.create_task(serve(spec, stop))
            run = await fed.wait_run(timeout=120)
            detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
            assert detail["secagg"]["recovered"] is True
            dropped = {d["site"] for s in detail["secagg"]["stages"] for d in s["dropped"]}
            assert dropped == {"s1", "s6"}
            # Their masked inputs were in before they vanished: the sum has all eight.
            want = expected_fedavg(1, list(deltas.values()))
            np.testing.assert_allclose(final_value(fed, run["id"], 1), want, atol=1e-3)
            stop.set()
            summary = await asyncio.wait_for(hosting, 30)
            assert sorted(summary["crashed"]) == ["s1", "s6"]

    asyncio.run(scenario())


def test_a_host_killed_mid_round_costs_only_its_own_sites_updates(
    tmp_path: pathlib.Path,
) -> None:
    """Two host processes; the second's sites are held in their fit of round 1 and the host
    is SIGKILLed there: the round completes with the first host's updates."""
    hold = tmp_path / "hold"
    hold.write_text("")
    first = {f"a{i}": f"delta=1.0,n={i + 1}" for i in range(5)}
    second = {f"b{i}": f"delta=5.0,n=10,hold={hold}" for i in range(5)}

    async def scenario() -> None:
        config = run_config(rounds=1, min_fit_sites=5, min_available_sites=10, round_timeout_s=120)
        async with federation(tmp_path, [config]) as fed:
            processes = []
            for k, sites in enumerate((first, second)):
                spec = host_spec(fed, tmp_path, sites, host=k, task="tests.vector_task:task")
                path = tmp_path / f"host-{k}.json"
                write_spec(spec, path)
                with open(tmp_path / f"host-{k}.log", "wb") as log:  # the child keeps its copy
                    processes.append(
                        subprocess.Popen(
                            [sys.executable, "-m", "quorum", "sim-host", "--spec", str(path)],
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            try:

                async def first_host_in() -> bool:
                    runs = await fed.api("/api/v1/runs")
                    if not runs:
                        return False
                    detail = await fed.api(f"/api/v1/runs/{runs[0]['id']}/rounds/1")
                    accepted = {
                        p["site"] for p in detail["participants"] if p["status"] == "accepted"
                    }
                    return accepted >= set(first)

                await wait_for(first_host_in, 120)
                os.killpg(processes[1].pid, signal.SIGKILL)
                run = await fed.wait_run(timeout=60)
                detail = await fed.api(f"/api/v1/runs/{run['id']}/rounds/1")
                status = {p["site"]: p["status"] for p in detail["participants"]}
                assert {status[s] for s in first} == {"accepted"}
                assert {status[s] for s in second} == {"lost"}
                want = expected_fedavg(1, [(1.0, i + 1) for i in range(5)])
                np.testing.assert_allclose(final_value(fed, run["id"], 1), want, rtol=1e-6)
            finally:
                for process in processes:
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()

    asyncio.run(scenario())
