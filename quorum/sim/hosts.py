"""The processes of a simulation: the server (always a local process) and the site hosts, as
local processes (`[sim] backend = "local"`) or as Ray actors (`"ray"`)."""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Protocol

from quorum.config import SimFile
from quorum.errors import QuorumError
from quorum.sim import processes
from quorum.sim.host import HostSpec, write_spec

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
TRACEBACK_LINES = 6


class HostGroup(Protocol):
    """The site hosts of one backend."""

    def check(self, when: str) -> None:
        """Raises QuorumError, with the host's log tail, when a host has ended."""

    def stop(self) -> None: ...

    def summaries(self) -> list[dict[str, Any]]:
        """What each host reported at its end (its sites, those that crashed, its node)."""


class LocalHosts:
    """Each host a `quorum sim-host` process of this machine, its log in logs/host-K.log."""

    def __init__(self, specs: list[HostSpec], work: pathlib.Path, logs: pathlib.Path) -> None:
        self.children: list[processes.Child] = []
        self._summary_paths: list[pathlib.Path] = []
        for spec in specs:
            spec_path = work / "hosts" / f"host-{spec.host}.json"
            summary = work / "hosts" / f"host-{spec.host}.summary.json"
            write_spec(spec, spec_path)
            self._summary_paths.append(summary)
            self.children.append(
                processes.start(
                    f"host-{spec.host}",
                    ["sim-host", "--spec", str(spec_path), "--summary", str(summary)],
                    logs,
                    # Fits run in the host's slots: one compute thread each avoids
                    # oversubscribing the cores (a user's explicit setting wins).
                    env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                )
            )

    def check(self, when: str) -> None:
        for child in self.children:
            if not child.alive():
                raise QuorumError(f"{child.name} exited {when}:\n{child.log_tail()}")

    def stop(self) -> None:
        processes.stop(self.children)

    def summaries(self) -> list[dict[str, Any]]:
        out = []
        for path in self._summary_paths:
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # a host killed before its end wrote none
        return out


class Fleet:
    """The server process and the site hosts; which host runs which site, and its log."""

    def __init__(self, server: processes.Child, logs: pathlib.Path) -> None:
        self.server = server
        self.hosts: HostGroup | None = None
        self._host_of: dict[str, int] = {}
        self.logs = logs

    def start_hosts(self, sim: SimFile, specs: list[HostSpec], work: pathlib.Path) -> None:
        """Once the server answers: sites that dial a server not yet listening back off, up
        to seconds, before they try again."""
        self._host_of = {site.name: spec.host for spec in specs for site in spec.sites}
        if sim.sim.backend == "ray":
            from quorum.sim.ray_hosts import RayHosts

            self.hosts = RayHosts(sim, specs, self.logs)
        else:
            self.hosts = LocalHosts(specs, work, self.logs)

    def check(self, when: str) -> None:
        if not self.server.alive():
            raise QuorumError(f"the server exited {when}:\n{self.server.log_tail()}")
        if self.hosts is not None:
            self.hosts.check(when)

    def stop(self) -> None:
        try:
            if self.hosts is not None:
                self.hosts.stop()
        finally:
            processes.stop([self.server])

    def summaries(self) -> list[dict[str, Any]]:
        return self.hosts.summaries() if self.hosts is not None else []

    def host_log(self, site: str) -> pathlib.Path:
        return self.logs / f"host-{self._host_of.get(site, 0)}.log"

    def traceback(self, site: str) -> tuple[pathlib.Path, list[str]]:
        """The site's host log, and the last lines of the traceback of its latest failed
        task there (its agent logs `site=NAME event=task_failed` and the traceback)."""
        path = self.host_log(site)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return path, []
        marker = f"site={site} event=task_failed"
        starts = [i for i, line in enumerate(lines) if marker in line]
        if not starts:
            return path, []
        block = []
        for line in lines[starts[-1] + 1 :]:
            if _LOG_LINE.match(line):
                break
            block.append(line)
        return path, block[-TRACEBACK_LINES:]


def start_server(server_toml: pathlib.Path, logs: pathlib.Path) -> Fleet:
    server = processes.start(
        "server", ["server", "start", "--config", str(server_toml), "--insecure"], logs
    )
    return Fleet(server, logs)
