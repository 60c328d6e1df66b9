"""Site hosts as Ray actors (`[sim] backend = "ray"`, `quorum sim --ray-address HOST:PORT`).

Each host is an actor that reserves `host_num_cpus` CPUs and `host_num_gpus` GPUs (a fraction
shares one GPU), placed by Ray on any node of the cluster; the server stays one process on this
machine, and the sites dial it at its federation address, so that address must be reachable
from every node. An actor runs the same `quorum.sim.host.serve` as a host process, on the
actor's event loop. Only JSON text crosses Ray: the actor's arguments and its result are strings
(Ray ships the actor class itself with its own serialiser, inside a cluster the operator trusts).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import pathlib
from typing import Any

from quorum import logs as quorum_logs
from quorum.config import SimFile
from quorum.errors import ConfigError, QuorumError
from quorum.sim.host import HostSpec, serve

STOP_TIMEOUT_S = 30.0


class HostActor:
    """The body of a host actor (wrapped by `ray.remote` when the simulation starts)."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()

    async def run(self, spec_json: str, log_path: str) -> str:
        import ray

        quorum_logs.setup("text", path=pathlib.Path(log_path))
        spec = HostSpec.model_validate_json(spec_json)
        node = ray.get_runtime_context().get_node_id()
        logging.getLogger("quorum.sim.host").info("event=ray_host node=%s", node)
        summary = await serve(spec, self._stop)
        return json.dumps({**summary, "node": node})

    async def stop(self) -> None:
        self._stop.set()


class RayHosts:
    def __init__(self, sim: SimFile, specs: list[HostSpec], logs: pathlib.Path) -> None:
        try:
            # Untyped on purpose: Ray's stubs do not follow `ray.remote` wrapping a class.
            ray: Any = importlib.import_module("ray")
        except ImportError:
            raise ConfigError(
                "sim.backend = 'ray' needs Ray: pip install 'quorum-fl[ray]'"
            ) from None
        self._ray = ray
        logs.mkdir(parents=True, exist_ok=True)
        self._logs = [logs / f"host-{spec.host}.log" for spec in specs]
        # The task module is imported from the working directory, as by a host process.
        path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
        env = {"PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        ray.init(
            address=sim.sim.ray_address,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": env},
            **({} if sim.sim.ray_address else {"num_cpus": os.cpu_count() or 1}),
        )
        actor = ray.remote(num_cpus=sim.sim.host_num_cpus, num_gpus=sim.sim.host_num_gpus)(
            HostActor
        )
        self._actors = [actor.remote() for _ in specs]
        self._runs = [
            a.run.remote(spec.model_dump_json(), str(log.resolve()))
            for a, spec, log in zip(self._actors, specs, self._logs, strict=True)
        ]
        self._summaries: list[dict[str, Any]] = []
        self._stopped = False

    def check(self, when: str) -> None:
        ready, _ = self._ray.wait(self._runs, num_returns=len(self._runs), timeout=0)
        for ref in ready:
            k = self._runs.index(ref)
            try:
                self._ray.get(ref)
                reason = "ended"
            except Exception as exc:  # the actor's error, or its death
                reason = f"failed: {exc}"
            raise QuorumError(f"host-{k} (a Ray actor) {reason} {when}:\n{self._tail(k)}")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._ray.get([a.stop.remote() for a in self._actors], timeout=STOP_TIMEOUT_S)
            for ref in self._runs:
                try:
                    self._summaries.append(json.loads(self._ray.get(ref, timeout=STOP_TIMEOUT_S)))
                except Exception:  # a host that died has no summary; its log says why
                    continue
        finally:
            for a in self._actors:
                self._ray.kill(a)
            self._ray.shutdown()

    def summaries(self) -> list[dict[str, Any]]:
        return self._summaries

    def _tail(self, k: int, lines: int = 20) -> str:
        try:
            return "\n".join(self._logs[k].read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
