"""`quorum sim` on a real two-node Ray cluster: the site hosts are Ray actors, one per node.

The cluster (`ray start --head`, then a second `ray start --address` as a worker node) and the
simulation run inside a network namespace of their own that has only a loopback interface:
Ray takes a node's address from its outward-facing interface and binds some of its agents
there, and in a namespace with nothing but `lo` that address is 127.0.0.1, so every byte of
the test stays on loopback. Fixed ports are safe there: nothing else lives in the namespace.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import sys

import pytest
import tomli_w

from tests.e2e.cli import REPO

pytestmark = pytest.mark.slow

HEAD_PORT = 6379  # below quorum.ports' picks (10,000 and up), so quorum sim never takes it


def test_the_sites_of_one_run_are_hosted_on_both_nodes_of_a_ray_cluster(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "out"
    config = tmp_path / "sim.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "sim": {
                    "num_sites": 8,
                    "site_data": "delta=0.5,n=1{index}",
                    "hosts": 2,
                    "host_num_cpus": 1,  # each node has one CPU: one host actor per node
                    "baselines": False,
                    "timeout_s": 300,
                    "output_dir": str(out),
                },
                "run": {
                    "task": "tests.vector_task:task",
                    "rounds": 2,
                    "min_fit_sites": 8,
                    "min_available_sites": 8,
                    "wait_timeout_s": 60,
                    "round_timeout_s": 60,
                },
            }
        )
    )
    bin_dir = pathlib.Path(sys.executable).parent
    ray, quorum = shlex.quote(str(bin_dir / "ray")), shlex.quote(str(bin_dir / "quorum"))
    # Ray's session folder holds Unix sockets, whose paths must stay under 108 bytes.
    ray_tmp = pathlib.Path(f"/tmp/qray-{tmp_path.name[-12:]}")
    common = "--node-ip-address 127.0.0.1 --num-cpus 1 --disable-usage-stats"
    script = f"""
set -eu
ip link set lo up
trap '{ray} stop --force >/dev/null 2>&1 || true' EXIT
{ray} start --head --port {HEAD_PORT} {common} --include-dashboard false \
    --min-worker-port 7000 --max-worker-port 7499 --temp-dir {ray_tmp}
{ray} start --address 127.0.0.1:{HEAD_PORT} {common} \
    --min-worker-port 7500 --max-worker-port 7999
{quorum} sim --config {shlex.quote(str(config))} --ray-address 127.0.0.1:{HEAD_PORT}
"""
    done = subprocess.run(
        ["unshare", "--net", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed" and len(report["rounds"]) == 2
    hosts = report["hosts"]
    assert len(hosts) == 2
    assert len({h["node"] for h in hosts}) == 2  # one host actor on each node
    assert sorted(s for h in hosts for s in h["sites"]) == report["sites"]
    assert all(len(h["sites"]) == 4 for h in hosts)
