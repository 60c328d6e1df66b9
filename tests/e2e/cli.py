"""Drives Quorum through its command line, as a user would: real server and site processes."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from quorum import identity
from quorum.admin.client import AdminClient
from quorum.ports import free_port
from quorum.sim import processes
from tests.hostile_site import HostileSite

TOKEN = "e2e-test-token"
TASK = "tests.vector_task:task"
REPO = pathlib.Path(__file__).resolve().parents[2]


def quorum(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`quorum ARGS`, with `env` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "quorum", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **env} if env else None,
    )


HEART_SIM = "examples/heart_disease/sim.toml"


def heart_disease_sim(
    out: pathlib.Path, *options: str, baselines: bool = False
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`quorum sim` on the bundled heart-disease federation, writing under `out`; asserts it
    succeeded and returns the process and its JSON report."""
    report = out / "report.json"
    done = quorum(
        "sim",
        "--config",
        HEART_SIM,
        "--report",
        str(report),
        "--set",
        f"sim.output_dir={out}",
        "--set",
        f"sim.baselines={str(baselines).lower()}",
        *options,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(report.read_text())
    return done, result


@dataclass
class Deployment:
    root: pathlib.Path
    run: dict[str, Any] | None
    fed_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    children: list[processes.Child] = field(default_factory=list)
    tls: tuple[pathlib.Path, pathlib.Path, pathlib.Path] | None = None
    """(certificate, key, CA bundle) to serve both ports with TLS, the bundle trusted by the
    sites and the admin client (`quorum certs issue` writes all three); plaintext
    (`--insecure`) otherwise."""

    @property
    def state_dir(self) -> pathlib.Path:
        return self.root / "state"

    @property
    def address(self) -> str:
        # With TLS, the name the certificate is for.
        return f"{'localhost' if self.tls else '127.0.0.1'}:{self.fed_port}"

    def write_config(self) -> pathlib.Path:
        config = {
            "server": {
                "federation_address": f"127.0.0.1:{self.fed_port}",
                "admin_address": f"127.0.0.1:{self.admin_port}",
                "state_dir": str(self.state_dir),
                "admin_token": TOKEN,
                "heartbeat_interval_s": 0.5,
                "session_timeout_s": 5.0,
                **({"tls_cert": str(self.tls[0]), "tls_key": str(self.tls[1])} if self.tls else {}),
            },
            "runs": [self.run] if self.run else [],
        }
        path = self.root / "server.toml"
        path.write_text(tomli_w.dumps(config))
        return path

    def keygen_and_add(self, name: str) -> pathlib.Path:
        """`quorum site keygen` then `quorum site add`, as the README says."""
        key = self.root / "keys" / f"{name}.key"
        for args in (
            ("site", "keygen", "--out", str(key)),
            (
                "site",
                "add",
                "--state-dir",
                str(self.state_dir),
                "--name",
                name,
                "--public-key",
                str(key.with_suffix(".pub")),
            ),
        ):
            done = quorum(*args)
            assert done.returncode == 0, done.stderr
        return key

    def start_server(self, *options: str) -> processes.Child:
        """`quorum server start`, with `options` added (e.g. `--log-format json`)."""
        config = self.write_config()
        child = processes.start(
            f"server-{len(self.children)}",
            [
                "server",
                "start",
                "--config",
                str(config),
                *([] if self.tls else ["--insecure"]),
                *options,
            ],
            self.root / "logs",
        )
        self.children.append(child)
        admin = self.admin()
        try:
            admin.wait_ready(60)
        finally:
            admin.close()
        return child

    def start_site(self, name: str, data: str, key: pathlib.Path | None = None) -> processes.Child:
        key = key or self.keygen_and_add(name)
        return self.start_agent(
            f"site-{name}",
            "--server",
            self.address,
            "--site-key",
            str(key),
            "--task",
            TASK,
            "--data",
            data,
            "--device",
            "cpu",
            *(["--root-cert", str(self.tls[2])] if self.tls else ["--insecure"]),
        )

    def start_agent(self, log_name: str, *args: str) -> processes.Child:
        """`quorum client run ARGS`, logged to logs/LOG_NAME.log (a new name for each start: a
        restarted agent would overwrite its predecessor's log)."""
        child = processes.start(log_name, ["client", "run", *args], self.root / "logs")
        self.children.append(child)
        return child

    def join_hostile(self, name: str) -> HostileSite:
        """Registers `name` through the admin API and joins it as a hand-written site that
        sends whatever the test crafts (tests.hostile_site)."""
        key = identity.generate()
        admin = self.admin()
        try:
            public = base64.b64encode(identity.public_bytes(key)).decode()
            admin.post("/api/v1/sites", {"name": name, "public_key": public})
        finally:
            admin.close()
        return HostileSite(self.address, key, TASK)

    def submit(self, run: dict[str, Any]) -> dict[str, Any]:
        admin = self.admin()
        try:
            created: dict[str, Any] = admin.post("/api/v1/runs", run)
            return created
        finally:
            admin.close()

    def wait_connected(self, names: set[str], timeout: float = 60) -> None:
        self.wait(
            lambda: names <= {s["name"] for s in self.get("/api/v1/sites") if s["connected"]},
            timeout,
            f"sites {sorted(names)} to connect",
        )

    def kill_server_in_round(
        self, server: processes.Child, round_no: int, hold: pathlib.Path
    ) -> None:
        """SIGKILLs the server once round `round_no` has offered its fits, then deletes `hold`.
        The sites must run with `hold=HOLD,hold_from=ROUND` so that the round is still running
        at the kill however slow the machine is."""

        def offered() -> bool:
            run = self.run_record()
            if not run or run["rounds_completed"] < round_no - 1:
                return False
            return bool(self.get(f"/api/v1/runs/{run['id']}/rounds/{round_no}")["cohort"])

        self.wait(offered, 90, f"round {round_no}'s fit offers")
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        hold.unlink()

    def admin(self) -> AdminClient:
        if self.tls:
            return AdminClient(f"https://127.0.0.1:{self.admin_port}", TOKEN, str(self.tls[2]))
        return AdminClient(f"http://127.0.0.1:{self.admin_port}", TOKEN)

    def get(self, path: str, **params: Any) -> Any:
        admin = self.admin()
        try:
            return admin.get(path, **params)
        finally:
            admin.close()

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = predicate()
            except Exception:  # the server may be restarting
                value = None
            if value:
                return value
            time.sleep(0.1)
        logs = "\n".join(f"--- {c.name}\n{c.log_tail(15)}" for c in self.children)
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def run_record(self) -> dict[str, Any] | None:
        runs = self.get("/api/v1/runs")
        return runs[0] if runs else None

    def wait_run(self, status: str = "completed", timeout: float = 60) -> dict[str, Any]:
        return self.wait(
            lambda: (r := self.run_record()) and r["status"] == status and r,
            timeout,
            f"run {status}",
        )

    def stop(self) -> None:
        processes.stop(self.children)


def run_settings(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "e2e",
        "task": TASK,
        "rounds": 3,
        "min_fit_sites": 2,
        "min_available_sites": 2,
        "wait_timeout_s": 120.0,  # a restarted agent may be in a long reconnect backoff
        "round_timeout_s": 20.0,
        "evaluate_timeout_s": 20.0,
        **overrides,
    }
