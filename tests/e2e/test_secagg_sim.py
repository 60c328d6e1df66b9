"""Secure aggregation through `quorum sim`, with site processes killed at chosen stages."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import pytest
import tomli_w

from quorum.privacy.dp.accounting import epsilon
from tests.e2e.cli import TASK, heart_disease_sim, quorum


def _vector_sim(tmp_path: pathlib.Path) -> pathlib.Path:
    config: dict[str, Any] = {
        "sim": {"timeout_s": 120, "output_dir": str(tmp_path / "out"), "baselines": False},
        "run": {
            "name": "secure",
            "task": TASK,
            "rounds": 3,
            "min_fit_sites": 3,
            "min_available_sites": 4,
            "wait_timeout_s": 3,  # round 3 waits this long for the killed site
            "round_timeout_s": 20,
            "secagg": {"enabled": True, "threshold": 3, "stage_timeout_s": 10},
        },
        "sites": [
            {"name": name, "data": f"delta={delta},n={n},acc=0.7"}
            for name, delta, n in [("a", 0.5, 10), ("b", 1.0, 20), ("c", -0.5, 30), ("d", 0.2, 40)]
        ],
    }
    path = tmp_path / "sim.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def test_sim_kills_a_site_at_a_stage_and_the_secure_rounds_go_on(tmp_path: pathlib.Path) -> None:
    """With distributed DP on as well: the sites add the noise, and a round that lost a site's
    share is accounted with the noise that reached the sum."""
    report = tmp_path / "report.json"
    done = quorum(
        "sim",
        "--config",
        str(_vector_sim(tmp_path)),
        "--report",
        str(report),
        "--kill-site",
        "c@2:masked-input",
        "--set",
        "run.central_dp.enabled=true",
        "--set",
        "run.central_dp.noise_multiplier=2.0",
        "--set",
        "run.secagg.clip_range=10",
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["status"] == "completed"
    by_round = {r["round"]: r["secagg"] for r in result["rounds"]}
    assert by_round[1]["survivors"] == 4 and by_round[1]["dropped"] == []
    assert by_round[2]["recovered"] is True and by_round[2]["survivors"] == 3
    assert [(d["site"], d["stage"]) for d in by_round[2]["dropped"]] == [("c", "masked-input")]
    assert set(by_round[2]["stage_seconds"]) == {
        "advertise-keys",
        "share-keys",
        "masked-input",
        "unmask",
    }
    assert by_round[3]["survivors"] == 3  # the killed process stays dead
    assert "c@masked-input" in done.stdout
    central = result["privacy"]["central"]
    assert central["mode"] == "distributed"
    # Per release: 4 of 4 shares, 3 of 4 (c was killed after the noise was planned for it),
    # then 3 of 3 once the cohort no longer holds c.
    assert [r["round"] for r in central["epsilon"]] == [1, 2, 3]
    epsilons = [r["central_epsilon"] for r in result["rounds"]]
    want = [
        epsilon("rdp", 1e-5, [(2.0, 1.0, 1)]),
        epsilon("rdp", 1e-5, [(2.0, 1.0, 1), (2.0 * math.sqrt(3 / 4), 1.0, 1)]),
        epsilon("rdp", 1e-5, [(2.0, 1.0, 2), (2.0 * math.sqrt(3 / 4), 1.0, 1)]),
    ]
    assert epsilons == pytest.approx(want)


def test_sim_refuses_a_kill_point_it_cannot_reach(tmp_path: pathlib.Path) -> None:
    config = _vector_sim(tmp_path)
    unknown = quorum("sim", "--config", str(config), "--kill-site", "zz@2:unmask")
    assert unknown.returncode == 2 and "zz" in unknown.stderr
    bad_stage = quorum("sim", "--config", str(config), "--kill-site", "a@2:lunch")
    assert bad_stage.returncode == 2 and "masked-input" in bad_stage.stderr


@pytest.mark.slow
def test_heart_disease_with_secure_aggregation_matches_the_plain_run(
    tmp_path: pathlib.Path,
) -> None:
    _, plain = heart_disease_sim(tmp_path / "plain")
    _, secure = heart_disease_sim(tmp_path / "secure", "--set", "run.secagg.enabled=true")
    assert all(r["secagg"]["recovered"] for r in secure["rounds"])
    assert len(secure["rounds"]) == len(plain["rounds"]) == 15
    gap = abs(secure["final"]["accuracy_mean_sites"] - plain["final"]["accuracy_mean_sites"])
    assert gap <= 0.01, (secure["final"], plain["final"])
