"""Privacy accounting with Opacus's accountants, shared by the site ledger and central DP.

A mechanism's history is a list of `(noise_multiplier, sample_rate, steps)` entries, the form
Opacus's accountants keep; ε is recomputed from it by a fresh accountant (nothing is pickled).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import Any, Literal

from quorum.errors import ConfigError

Accountant = Literal["rdp", "prv"]
HistoryEntry = tuple[float, float, int]
ACCOUNTANT_CODES: dict[Accountant, float] = {"rdp": 0.0, "prv": 1.0}
"""The accountant as a number, for metrics (which are numbers only): `dp_accountant`."""

RDP_ORDERS = (
    [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
    + [
        80,
        96,
        128,
        160,
        192,
        256,
        320,
        384,
        512,
        768,
        1024,
    ]
)
"""Rényi orders for the RDP accountant: Opacus's default range ends at 63, which cannot certify
an ε below about log(1/δ)/62 (0.19 at δ = 1e-5) however much noise there is; higher orders can.
Few of them: Opacus computes an integer order α in O(α) steps, on every ε the ledger asks for."""


def epsilon(accountant: Accountant, delta: float, history: Sequence[HistoryEntry]) -> float:
    """ε spent at `delta` by the steps of `history` (0.0 for an empty history)."""
    if not history:
        return 0.0
    return _epsilon(accountant, delta, tuple((float(s), float(q), int(n)) for s, q, n in history))


@functools.lru_cache(maxsize=256)
def _epsilon(accountant: Accountant, delta: float, history: tuple[HistoryEntry, ...]) -> float:
    # Memoised: a fit asks for the same ε several times (the check before training, the
    # record after it, the report), and each costs Opacus ~15 ms.
    acc = opacus_module("opacus.accountants").create_accountant(mechanism=accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta, **accountant_options(accountant)))


def appended(history: Sequence[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """`history` with `entry`'s steps added, merged into the entry of the same noise multiplier
    and sample rate wherever it stands: composition does not depend on the order, and a history
    of few entries keeps ε cheap to compute however many rounds ran."""
    out = list(history)
    sigma, q, steps = entry
    for i, (s, r, n) in enumerate(out):
        if (s, r) == (sigma, q):
            out[i] = (s, r, n + steps)
            return out
    out.append((sigma, q, steps))
    return out


def accountant_options(accountant: Accountant) -> dict[str, Any]:
    return {"alphas": RDP_ORDERS} if accountant == "rdp" else {}


def opacus_module(name: str) -> Any:
    """Imports a module of Opacus, which differential privacy needs."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"differential privacy needs Opacus ({exc}); install it with `pip install opacus`"
        ) from None
