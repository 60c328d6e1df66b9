"""Differential privacy through `quorum sim`: every hospital trains with DP-SGD under its own
budget, and the server adds central DP on top; the report and plot show ε per round."""

from __future__ import annotations

import json
import pathlib

from tests.e2e.cli import heart_disease_sim

SITES = ("cleveland", "hungarian", "switzerland", "va")


def test_heart_disease_sites_train_under_their_own_budget(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    _, result = heart_disease_sim(
        out,
        "--set",
        "run.rounds=3",
        "--set",
        "site.dp.epsilon=1.0",
        "--set",
        "run.central_dp.enabled=true",
        "--set",
        "run.central_dp.noise_multiplier=2.0",
    )
    epsilons = [r["dp_epsilon"] for r in result["rounds"]]
    assert len(epsilons) == 3
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2] <= 1.0 + 1e-9
    # Each site keeps its accountant beside its key, for restarts and later rounds.
    for site in SITES:
        ledger = json.loads((out / "work" / "sites" / f"{site}.privacy.json").read_text())
        assert result["run_id"] in json.dumps(ledger)
    privacy = result["privacy"]
    assert sorted(privacy["sites"]) == list(SITES)
    for values in privacy["sites"].values():
        spent = [p["epsilon"] for p in values["epsilon"]]
        assert [p["round"] for p in values["epsilon"]] == [1, 2, 3]
        assert spent == sorted(spent) and spent[-1] <= values["budget"] == 1.0
    central = [r["central_epsilon"] for r in result["rounds"]]
    assert 0 < central[0] < central[1] < central[2]
    assert [p["epsilon"] for p in privacy["central"]["epsilon"]] == central
    assert (out / "report.png").stat().st_size > 10_000  # accuracy and ε panels
