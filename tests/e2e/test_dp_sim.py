"""Site-level DP through `quorum sim`: every hospital trains with DP-SGD under its own budget."""

from __future__ import annotations

import json
import pathlib

from tests.e2e.cli import heart_disease_sim


def test_heart_disease_sites_train_under_their_own_budget(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    _, result = heart_disease_sim(out, "--set", "run.rounds=3", "--set", "site.dp.epsilon=1.0")
    epsilons = [r["dp_epsilon"] for r in result["rounds"]]
    assert len(epsilons) == 3
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2] <= 1.0 + 1e-9
    # Each site keeps its accountant beside its key, for restarts and later rounds.
    for site in ("cleveland", "hungarian", "switzerland", "va"):
        ledger = json.loads((out / "work" / "keys" / f"{site}.privacy.json").read_text())
        assert result["run_id"] in json.dumps(ledger)
