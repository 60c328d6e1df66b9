"""Site-level differential privacy for an agent: the site's own budget, enforced at the site."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from quorum.config import SiteDPConfig
from quorum.errors import ConfigError
from quorum.task import SiteTask

if TYPE_CHECKING:
    from quorum.privacy.dp import PrivacyLedger


@runtime_checkable
class SupportsDP(Protocol):
    """A SiteTask that can train with DP-SGD under a privacy ledger (TorchTask does)."""

    def enable_dp(self, ledger: PrivacyLedger) -> None: ...


def enable_site_dp(site_task: SiteTask, budget: SiteDPConfig, ledger_path: pathlib.Path) -> None:
    """Turns on DP-SGD for every later fit of `site_task`, under `budget`, with the accountant
    kept in `ledger_path` (across rounds and agent restarts)."""
    from quorum.privacy.dp import DPSettings, PrivacyLedger

    if not isinstance(site_task, SupportsDP):
        raise ConfigError(
            f"{type(site_task).__name__} cannot train with site-level DP: its SiteTask needs an "
            "enable_dp(ledger) method (quorum.TorchTask has one)"
        )
    settings = DPSettings(
        epsilon=budget.epsilon,
        delta=budget.delta,
        max_grad_norm=budget.max_grad_norm,
        accountant=budget.accountant,
    )
    site_task.enable_dp(PrivacyLedger(ledger_path, settings))
