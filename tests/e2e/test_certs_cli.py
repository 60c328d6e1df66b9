"""TLS from `quorum certs`, as the README sets it up: a CA, a server certificate for the names
the sites dial, a server serving both ports with it, a site agent trusting the CA's bundle."""

from __future__ import annotations

import pathlib
import ssl

import httpx
import pytest

from tests.e2e.cli import TOKEN, Deployment, quorum, run_settings

HEART_TASK = "examples.heart_disease.task:task"


def test_a_site_joins_and_an_api_client_verifies_with_the_issued_bundle(
    tmp_path: pathlib.Path,
) -> None:
    ca, tls = tmp_path / "ca", tmp_path / "server-tls"
    made = quorum("certs", "init", "--dir", str(ca), "--name", "E2E consortium CA")
    assert made.returncode == 0, made.stderr
    issued = quorum(
        "certs", "issue", "--dir", str(ca), "--san", "localhost", "--san", "127.0.0.1",
        "--out", str(tls),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    bundle = tls / "ca.crt"
    run = run_settings(
        name="heart-tls",
        task=HEART_TASK,
        rounds=1,
        min_fit_sites=1,
        min_available_sites=1,
        site_config={"local_steps": 5},
    )
    deployment = Deployment(tmp_path, run, tls=(tls / "server.crt", tls / "server.key", bundle))
    try:
        deployment.start_server()
        key = deployment.keygen_and_add("cleveland")
        deployment.start_agent(
            "site-cleveland",
            "--server", deployment.address,  # localhost: the certificate's DNS name
            "--site-key", str(key),
            "--task", HEART_TASK,
            "--data", "cleveland",
            "--device", "cpu",
            "--root-cert", str(bundle),
        )  # fmt: skip
        done = deployment.wait_run(timeout=180)
        assert done["rounds_completed"] == 1

        # The admin API over HTTPS at the certificate's IP address, verified against ca.crt.
        url = f"https://127.0.0.1:{deployment.admin_port}/api/v1/runs"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(verify=ssl.create_default_context(cafile=str(bundle))) as http:
            runs = http.get(url, headers=auth)
        assert runs.status_code == 200 and runs.json()[0]["status"] == "completed"

        # A client that trusts another CA is refused in the handshake.
        other = tmp_path / "other-ca"
        assert quorum("certs", "init", "--dir", str(other)).returncode == 0
        other_ctx = ssl.create_default_context(cafile=str(other / "ca.crt"))
        with (
            httpx.Client(verify=other_ctx) as http,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            http.get(url, headers=auth)
    finally:
        deployment.stop()
