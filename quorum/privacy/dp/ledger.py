"""A site's privacy ledger for site-level DP-SGD: its (ε, δ) budget per run and what is spent.

The ledger is a JSON file owned by the site, keyed by run id. For each run it keeps the settings
the run started with, the noise multiplier calibrated once when the run started (so that all the
run's planned steps fit the budget), the sample rate, the planned number of steps, and the
accountant's history as `[noise_multiplier, sample_rate, steps]` entries. ε spent is recomputed
by an Opacus accountant rebuilt from that history (nothing is pickled), so the ledger survives
restarts. The server cannot raise a site's budget: the budget lives only here.
"""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass
from typing import Any

from quorum.atomic import write_atomic
from quorum.errors import BudgetExhausted, ConfigError, TaskError
from quorum.privacy.dp.accounting import (
    ACCOUNTANT_CODES,
    Accountant,
    HistoryEntry,
    accountant_options,
    appended,
    epsilon,
    opacus_module,
)

FORMAT_VERSION = 1
RELATIVE_SLACK = 1e-9


@dataclass(frozen=True)
class DPSettings:
    """A site's (ε, δ) budget for a run, its per-example clipping norm and its accountant."""

    epsilon: float
    delta: float
    max_grad_norm: float = 1.0
    accountant: Accountant = "rdp"

    def __post_init__(self) -> None:
        if not _finite(self.epsilon) or self.epsilon <= 0:
            raise ConfigError(f"DP epsilon must be a positive number, got {self.epsilon!r}")
        if not _finite(self.delta) or not 0 < self.delta < 1:
            raise ConfigError(f"DP delta must be between 0 and 1 (exclusive), got {self.delta!r}")
        if not _finite(self.max_grad_norm) or self.max_grad_norm <= 0:
            raise ConfigError(
                f"DP max_grad_norm must be a positive number, got {self.max_grad_norm!r}"
            )
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError(f"DP accountant must be 'rdp' or 'prv', got {self.accountant!r}")


@dataclass
class _Run:
    settings: DPSettings
    noise_multiplier: float
    sample_rate: float
    total_steps: int
    history: list[HistoryEntry]


class PrivacyLedger:
    """The privacy spent per run at one site, persisted at `path` (JSON, written atomically).

    A run's accounting uses the settings it started with (stored with the run): `settings` apply
    to runs this ledger has not seen yet.
    """

    def __init__(self, path: pathlib.Path, settings: DPSettings) -> None:
        self.path = path
        self.settings = settings
        self._runs: dict[str, _Run] = self._load()

    def plan(self, run_id: str, sample_rate: float, total_steps: int) -> float:
        """The run's noise multiplier: calibrated on the first call so that `total_steps` steps
        at `sample_rate` spend at most the budget, then stored; later calls return the stored
        value whatever their arguments (the plan is fixed when the run starts)."""
        run = self._runs.get(run_id)
        if run is not None:
            return run.noise_multiplier
        if not _finite(sample_rate) or not 0 < sample_rate <= 1:
            raise TaskError(f"DP sample rate must be in (0, 1], got {sample_rate!r}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise TaskError(f"DP planned total steps must be at least 1, got {total_steps!r}")
        s = self.settings
        try:
            sigma = float(
                opacus_module("opacus.accountants.utils").get_noise_multiplier(
                    target_epsilon=s.epsilon,
                    target_delta=s.delta,
                    sample_rate=sample_rate,
                    steps=total_steps,
                    accountant=s.accountant,
                    **accountant_options(s.accountant),
                )
            )
        except ValueError as exc:
            raise ConfigError(
                f"cannot calibrate DP noise for epsilon={s.epsilon}, delta={s.delta} over "
                f"{total_steps} steps at sample rate {sample_rate}: {exc}"
            ) from None
        self._runs[run_id] = _Run(s, sigma, float(sample_rate), total_steps, [])
        self._save()
        return sigma

    def spent(self, run_id: str) -> float:
        """ε spent so far in the run (0.0 when nothing is recorded)."""
        run = self._runs.get(run_id)
        if run is None or not run.history:
            return 0.0
        return _epsilon(run.settings, run.history)

    def check(self, run_id: str, steps: int) -> None:
        """Raises BudgetExhausted when `steps` more steps at the run's planned noise and sample
        rate would spend more than the budget."""
        run = self._planned(run_id)
        after = _epsilon(run.settings, _appended(run, steps)) if steps > 0 else self.spent(run_id)
        budget = run.settings.epsilon
        if after > budget * (1 + RELATIVE_SLACK):
            raise BudgetExhausted(
                f"the privacy budget of run {run_id!r} is spent: epsilon spent "
                f"{self.spent(run_id):.4g} of a budget of {budget:.4g} "
                f"(delta={run.settings.delta:g}); {steps} more step(s) would reach {after:.4g}. "
                "This site refuses further training in this run"
            )

    def record(self, run_id: str, steps: int) -> float:
        """Adds `steps` steps at the run's planned noise and sample rate; returns ε spent."""
        run = self._planned(run_id)
        if steps < 0:
            raise TaskError(f"cannot record a negative number of DP steps ({steps})")
        if steps:
            run.history = _appended(run, steps)
            self._save()
        return self.spent(run_id)

    def report(self, run_id: str) -> dict[str, float]:
        """Metrics describing the run's privacy: ε spent, δ, σ, C, the budget and what remains."""
        run = self._planned(run_id)
        spent = self.spent(run_id)
        return {
            "dp_epsilon": spent,
            "dp_delta": run.settings.delta,
            "dp_noise_multiplier": run.noise_multiplier,
            "dp_max_grad_norm": run.settings.max_grad_norm,
            "dp_epsilon_budget": run.settings.epsilon,
            "dp_budget_remaining": max(0.0, run.settings.epsilon - spent),
            "dp_accountant": ACCOUNTANT_CODES[run.settings.accountant],
        }

    def sample_rate(self, run_id: str) -> float:
        """The sample rate planned for the run (fixed at its first `plan`)."""
        return self._planned(run_id).sample_rate

    def max_grad_norm(self, run_id: str) -> float:
        """The per-example clipping norm of the run (from the settings it started with)."""
        return self._planned(run_id).settings.max_grad_norm

    def _planned(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise TaskError(f"run {run_id!r} has no DP plan in {self.path}; call plan() first")
        return run

    def _load(self) -> dict[str, _Run]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read the privacy ledger {self.path}: {exc}") from None
        try:
            doc = json.loads(text)
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported version {doc.get('version')!r}")
            return {str(rid): _run_from_json(raw) for rid, raw in doc["runs"].items()}
        except (ValueError, TypeError, KeyError, AttributeError, ConfigError) as exc:
            raise ConfigError(
                f"the privacy ledger {self.path} is not valid ({type(exc).__name__}: {exc}); "
                "restore it from a backup (deleting it forgets the privacy already spent)"
            ) from None

    def _save(self) -> None:
        doc = {
            "version": FORMAT_VERSION,
            "runs": {
                rid: {
                    "settings": asdict(run.settings),
                    "noise_multiplier": run.noise_multiplier,
                    "sample_rate": run.sample_rate,
                    "total_steps": run.total_steps,
                    "history": [list(entry) for entry in run.history],
                }
                for rid, run in self._runs.items()
            },
        }
        write_atomic(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def _run_from_json(raw: Any) -> _Run:
    s = raw["settings"]
    settings = DPSettings(
        epsilon=float(s["epsilon"]),
        delta=float(s["delta"]),
        max_grad_norm=float(s["max_grad_norm"]),
        accountant=s["accountant"],
    )
    history = [(float(sigma), float(q), int(n)) for sigma, q, n in raw["history"]]
    return _Run(
        settings,
        float(raw["noise_multiplier"]),
        float(raw["sample_rate"]),
        int(raw["total_steps"]),
        history,
    )


def _appended(run: _Run, steps: int) -> list[HistoryEntry]:
    """The run's history with `steps` more steps at its planned noise and sample rate."""
    return appended(run.history, (run.noise_multiplier, run.sample_rate, steps))


def _epsilon(settings: DPSettings, history: list[HistoryEntry]) -> float:
    return epsilon(settings.accountant, settings.delta, history)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
