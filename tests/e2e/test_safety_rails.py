"""Safety rails, each found by trying: one server per state directory and per port, a
registration that cannot create a stray store, and a site that says which TLS flag is wrong
and can give up."""

from __future__ import annotations

import pathlib
import signal
import time

from quorum.ports import free_port
from tests.e2e.cli import Deployment, quorum, run_settings


def _refusal(*args: str) -> str:
    done = quorum(*args, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


def test_a_second_server_on_a_live_state_dir_or_port_is_refused_in_one_line(
    deployment: Deployment, tmp_path: pathlib.Path
) -> None:
    d = deployment
    server = d.start_server()
    config = str(d.write_config())
    start = ("server", "start", "--config", config, "--insecure")
    free_fed = ("--set", f"server.federation_address=127.0.0.1:{free_port()}")
    free_admin = ("--set", f"server.admin_address=127.0.0.1:{free_port()}")
    elsewhere = ("--set", f"server.state_dir={tmp_path / 'other'}")
    same_state = _refusal(*start, *free_fed, *free_admin)
    assert f"pid {server.process.pid}" in same_state and "state directory" in same_state
    grpc_clash = _refusal(*start, *elsewhere, *free_admin)
    assert f"127.0.0.1:{d.fed_port} for the federation service" in grpc_clash
    admin_clash = _refusal(*start, *elsewhere, *free_fed)
    assert f"127.0.0.1:{d.admin_port} for the admin API" in admin_clash
    assert "in use" in admin_clash
    assert server.alive() and d.get("/api/v1/health")["status"] == "ok"


def test_site_add_refuses_a_directory_without_a_store_unless_init(
    deployment: Deployment, tmp_path: pathlib.Path
) -> None:
    d = deployment
    d.start_server()
    key = tmp_path / "k.key"
    assert quorum("site", "keygen", "--out", str(key)).returncode == 0
    typo = tmp_path / "sate"
    add = ("site", "add", "--name", "a", "--public-key", str(key.with_suffix(".pub")))
    message = _refusal(*add, "--state-dir", str(typo))
    assert "holds no state store" in message and "--init" in message
    assert not typo.exists()
    assert quorum(*add, "--state-dir", str(d.state_dir)).returncode == 0
    assert quorum(*add, "--state-dir", str(typo), "--init").returncode == 0


def test_a_site_told_the_wrong_tls_names_the_flag_and_gives_up_when_asked(
    deployment: Deployment, tmp_path: pathlib.Path
) -> None:
    """A plaintext server (`--insecure`) and an agent that expects TLS: the error says to pass
    --insecure, once per attempt and without gRPC's OpenSSL lines, and --give-up-after ends
    the agent with that error."""
    d = deployment
    d.start_server()
    key = d.keygen_and_add("a")
    assert quorum("certs", "init", "--dir", str(tmp_path / "ca")).returncode == 0
    started = time.monotonic()
    done = quorum(
        "client", "run", "--server", d.address, "--site-key", str(key),
        "--task", "tests.vector_task:task", "--data", "delta=1.0,n=1",
        "--root-cert", str(tmp_path / "ca" / "ca.crt"), "--give-up-after", "2",
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert time.monotonic() - started < 45
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no session with") and "giving up" in last, last
    assert "pass --insecure to this agent" in last
    assert "ssl_transport_security" not in done.stderr  # gRPC's own OpenSSL lines


def test_a_site_stopped_mid_fit_exits_at_once(deployment: Deployment) -> None:
    # A fit cannot be stopped; SIGTERM (a pod's, an operator's Ctrl-C) must not wait for it.
    d = deployment
    d.run = None
    d.start_server()
    hold = d.root / "hold"  # the fit waits while it exists: mid-fit whenever the signal comes
    hold.touch()
    try:
        site = d.start_site("c", f"delta=1.0,n=1,hold={hold},hold_from=1")
        d.wait_connected({"c"})
        d.submit(run_settings(rounds=1, min_fit_sites=1, min_available_sites=1))

        def fitting() -> bool:
            run = d.run_record()
            if not run:
                return False
            fits = d.get(f"/api/v1/runs/{run['id']}/rounds/1")["participants"]
            return any(p["site"] == "c" and p["bytes_out"] > 0 for p in fits)

        d.wait(fitting, 60, "c to download its model and fit")
        time.sleep(0.5)
        stopped = time.monotonic()
        site.process.send_signal(signal.SIGTERM)
        site.process.wait(timeout=30)
        assert time.monotonic() - stopped < 15
        assert site.process.returncode == 0
        assert "event=stopped_mid_task" in site.log_path.read_text()
    finally:
        hold.unlink()
