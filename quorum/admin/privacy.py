"""The privacy ledger of a run, as the admin API shows it (`GET /api/v1/runs/{id}/privacy`).

Site-level DP: what each site reported with its fits (ε spent so far, δ, noise multiplier,
clipping norm, accountant, budget), per round and attempt, and its refusals once its budget was
spent. The budget lives at the site; the server only shows what the sites say. Central DP: the
run's user-level ε after each release (a round's model, or under SecAgg its unmasked sum),
computed by the server's accountant when it happened.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from quorum.errors import BudgetExhausted
from quorum.privacy.dp.accounting import ACCOUNTANT_CODES
from quorum.server.records import FitParticipation
from quorum.server.store import Store

_ACCOUNTANT_NAMES = {code: name for name, code in ACCOUNTANT_CODES.items()}


class SiteRound(BaseModel):
    round: int
    attempt: int
    status: str
    """The fit's outcome: accepted, refused (a spent budget), failed, lost, timed_out..."""
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    max_grad_norm: float | None
    accountant: str | None
    budget: float | None
    budget_remaining: float | None
    error: str | None


class SitePrivacy(BaseModel):
    site: str
    dp: bool
    """Whether the site reported site-level DP (a site without it spends no budget)."""
    epsilon: float | None
    """ε spent in this run, as of the site's latest report."""
    delta: float | None
    budget: float | None
    budget_remaining: float | None
    accountant: str | None
    exhausted: bool
    """The site refused its latest fit because its budget was spent."""
    rounds: list[SiteRound]


class CentralRound(BaseModel):
    """One release: a round's model, or under SecAgg its unmasked sum (an attempt that aborted
    after it was released counts too)."""

    round: int
    attempt: int
    epsilon: float
    noise_multiplier: float
    sample_rate: float
    clipping_norm: float
    unclipped_fraction: float | None


class CentralPrivacy(BaseModel):
    mode: Literal["central", "distributed"]
    """central: the server clips and adds the noise; distributed: the sites do (SecAgg)."""
    noise_multiplier: float
    adaptive: bool
    delta: float
    accountant: str
    epsilon: float
    """The run's user-level ε so far, over every release."""
    clipping_norm: float
    """The norm the next round will use."""
    rounds: list[CentralRound]


class PrivacyOut(BaseModel):
    run_id: str
    sites: list[SitePrivacy]
    central: CentralPrivacy | None


def privacy_ledger(store: Store, run_id: str) -> PrivacyOut:
    record = store.run(run_id)
    by_site: dict[str, list[SiteRound]] = {}
    for fit in store.fit_participations(run_id):
        by_site.setdefault(fit.task.site, []).append(_site_round(fit))
    sites = [_site(name, rounds) for name, rounds in sorted(by_site.items())]
    central = None
    config = record.checked_config
    cfg = config.central_dp
    if cfg.enabled:
        released = store.phase_metrics(run_id, "central_dp")
        rounds = [_central_round(n, a, m) for n, a, m in released]
        last = released[-1][2] if released else {}
        central = CentralPrivacy(
            mode="distributed" if config.secagg.enabled else "central",
            noise_multiplier=cfg.noise_multiplier,
            adaptive=cfg.adaptive,
            delta=cfg.delta,
            accountant=cfg.accountant,
            epsilon=rounds[-1].epsilon if rounds else 0.0,
            clipping_norm=last.get("next_clipping_norm", cfg.clipping_norm),
            rounds=rounds,
        )
    return PrivacyOut(run_id=run_id, sites=sites, central=central)


def _site_round(fit: FitParticipation) -> SiteRound:
    m = fit.task.metrics
    code = m.get("dp_accountant")
    return SiteRound(
        round=fit.round,
        attempt=fit.attempt,
        status=fit.task.status,
        epsilon=m.get("dp_epsilon"),
        delta=m.get("dp_delta"),
        noise_multiplier=m.get("dp_noise_multiplier"),
        max_grad_norm=m.get("dp_max_grad_norm"),
        accountant=None if code is None else _ACCOUNTANT_NAMES.get(code, f"unknown ({code})"),
        budget=m.get("dp_epsilon_budget"),
        budget_remaining=m.get("dp_budget_remaining"),
        error=fit.task.error,
    )


def _site(name: str, rounds: list[SiteRound]) -> SitePrivacy:
    reported = [r for r in rounds if r.epsilon is not None]
    latest = reported[-1] if reported else None
    last = rounds[-1]
    return SitePrivacy(
        site=name,
        dp=latest is not None,
        epsilon=latest.epsilon if latest else None,
        delta=latest.delta if latest else None,
        budget=latest.budget if latest else None,
        budget_remaining=latest.budget_remaining if latest else None,
        accountant=latest.accountant if latest else None,
        exhausted=last.status == "refused" and (last.error or "").startswith(BudgetExhausted.code),
        rounds=rounds,
    )


def _central_round(round_no: int, attempt: int, m: dict[str, float]) -> CentralRound:
    return CentralRound(
        round=round_no,
        attempt=attempt,
        epsilon=m["epsilon"],
        noise_multiplier=m["noise_multiplier"],
        sample_rate=m["sample_rate"],
        clipping_norm=m["clipping_norm"],
        unclipped_fraction=m.get("unclipped_fraction"),
    )
