"""The site's privacy ledger: calibration, accounting, refusal and persistence (real Opacus)."""

from __future__ import annotations

import json
import pathlib

import pytest

from quorum.errors import ConfigError, TaskError
from quorum.privacy.dp import BudgetExhausted, DPSettings, PrivacyLedger
from quorum.privacy.dp.accounting import ACCOUNTANT_CODES

pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")

STEPS = 20
RATE = 0.2


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibrated_plan_fits_the_budget_and_refuses_beyond_it(
    tmp_path: pathlib.Path, accountant: str
) -> None:
    settings = DPSettings(epsilon=2.0, delta=1e-5, accountant=accountant)  # type: ignore[arg-type]
    ledger = PrivacyLedger(tmp_path / "ledger.json", settings)
    assert ledger.spent("run") == 0.0
    sigma = ledger.plan("run", RATE, STEPS)
    assert sigma > 0
    assert ledger.plan("run", 0.5, 1000) == sigma  # fixed when the run starts
    previous = 0.0
    for _ in range(STEPS // 5):
        ledger.check("run", 5)
        spent = ledger.record("run", 5)
        assert spent > previous
        assert spent == ledger.spent("run")
        previous = spent
    assert 0.5 * settings.epsilon < previous <= settings.epsilon
    with pytest.raises(BudgetExhausted, match="budget"):
        ledger.check("run", 1)
    assert isinstance(BudgetExhausted("x"), TaskError)
    report = ledger.report("run")
    assert report == {
        "dp_epsilon": previous,
        "dp_delta": 1e-5,
        "dp_noise_multiplier": sigma,
        "dp_max_grad_norm": 1.0,
        "dp_epsilon_budget": 2.0,
        "dp_budget_remaining": pytest.approx(2.0 - previous),
        "dp_accountant": ACCOUNTANT_CODES[accountant],
    }


def test_history_merges_and_survives_a_restart(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "site" / "ledger.json"
    settings = DPSettings(epsilon=3.0, delta=1e-5, max_grad_norm=0.5)
    ledger = PrivacyLedger(path, settings)
    sigma = ledger.plan("a", RATE, STEPS)
    ledger.record("a", 3)
    spent = ledger.record("a", 4)
    doc = json.loads(path.read_text())
    assert doc["runs"]["a"]["history"] == [[sigma, RATE, 7]]
    assert doc["runs"]["a"]["total_steps"] == STEPS
    again = PrivacyLedger(path, DPSettings(epsilon=100.0, delta=1e-3))
    assert again.spent("a") == spent
    assert again.plan("a", 0.9, 5) == sigma
    assert again.report("a")["dp_epsilon_budget"] == 3.0  # the run keeps its starting settings
    assert again.record("a", 1) > spent
    assert again.spent("other") == 0.0


def test_unplanned_run_and_invalid_plans(tmp_path: pathlib.Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.json", DPSettings(epsilon=1.0, delta=1e-5))
    with pytest.raises(TaskError, match="plan"):
        ledger.check("r", 1)
    with pytest.raises(TaskError, match="sample rate"):
        ledger.plan("r", 0.0, 10)
    with pytest.raises(TaskError, match="steps"):
        ledger.plan("r", 0.1, 0)


def test_invalid_file_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"ledger\.json"):
        PrivacyLedger(path, DPSettings(epsilon=1.0, delta=1e-5))
    path.write_text(json.dumps({"version": 1, "runs": {"r": {"history": []}}}))
    with pytest.raises(ConfigError, match="not valid"):
        PrivacyLedger(path, DPSettings(epsilon=1.0, delta=1e-5))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"epsilon": 0.0, "delta": 1e-5}, "epsilon"),
        ({"epsilon": float("inf"), "delta": 1e-5}, "epsilon"),
        ({"epsilon": 1.0, "delta": 0.0}, "delta"),
        ({"epsilon": 1.0, "delta": 1.0}, "delta"),
        ({"epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 0.0}, "max_grad_norm"),
        ({"epsilon": 1.0, "delta": 1e-5, "accountant": "gdp"}, "accountant"),
    ],
)
def test_settings_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DPSettings(**kwargs)  # type: ignore[arg-type]


def test_small_budgets_calibrate_with_the_rdp_accountant(tmp_path: pathlib.Path) -> None:
    # Opacus's default Rényi orders stop at 63, which cannot certify ε = 0.1 at δ = 1e-5 (the
    # heart-disease example's smallest budget); the ledger's wider range can.
    ledger = PrivacyLedger(tmp_path / "l.json", DPSettings(epsilon=0.1, delta=1e-5))
    sigma = ledger.plan("run", 4 / 199, 1500)
    assert sigma > 10
    assert 0.05 < ledger.record("run", 1500) <= 0.1
