"""Site-level differential privacy: DP-SGD settings and the site's privacy ledger (Opacus)."""

from quorum.errors import BudgetExhausted
from quorum.privacy.dp.ledger import DPSettings, PrivacyLedger

__all__ = ["BudgetExhausted", "DPSettings", "PrivacyLedger"]
