"""What the store answers about rounds: typed records, read by attribute in the drivers and
answered as they are by the admin API (their fields, in order, are the JSON it sends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Participation:
    """One task offered to one site in one attempt of a round, and what became of it."""

    site: str
    task_id: str
    kind: str
    """fit or evaluate"""
    status: str
    """`offered` until the site answers or the task is given up, then what became of it"""
    num_examples: int | None
    metrics: dict[str, float]
    duration_s: float | None
    bytes_in: int
    bytes_in_uncompressed: int
    """What the update would have been without the run's compression (`bytes_in` if none)."""
    bytes_out: int
    error: str | None
    staleness: int | None
    """Async runs: versions the global model moved while the site trained."""
    offered_at: float
    finished_at: float | None


@dataclass(frozen=True)
class RejectedUpload:
    site: str | None
    task_id: str | None
    code: str
    message: str
    at: float


@dataclass(frozen=True)
class RoundSummary:
    """One attempt of a round."""

    run_id: str
    round: int
    attempt: int
    status: str
    """running, completed or aborted"""
    started_at: float
    finished_at: float | None
    duration_s: float | None
    model_digest: str | None
    abort_reason: str | None
    metrics: dict[str, dict[str, float]]
    """By phase (fit, evaluate, central_dp, gossip, ...), by name."""
    secagg: dict[str, Any] | None
    """The SecAgg+ report of the attempt (cohort, stages, dropped sites), when it had one."""


@dataclass(frozen=True)
class RoundDetail(RoundSummary):
    """A round's latest attempt, with its tasks, and its earlier attempts."""

    cohort: list[str]
    """The sites offered a fit task, sorted."""
    participants: list[Participation]
    rejected_uploads: list[RejectedUpload]
    bytes_in: int
    bytes_in_uncompressed: int
    bytes_out: int
    earlier_attempts: list[RoundSummary]
