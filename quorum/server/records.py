"""What the store answers: typed records of sites, admin tokens, runs, rounds, events,
baseline jobs and the totals a metrics scrape reads. The drivers read them by attribute; the
admin API answers the round records as they are (their fields, in order, are the JSON it sends)
and builds its other response models from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quorum.config import RunConfig
from quorum.errors import StoreError

RUN_ACTIVE = ("queued", "running")
STORED_INT_MAX = 2**63 - 1
"""The largest integer the store (SQLite) holds: a number a query compares with is no larger."""


@dataclass(frozen=True)
class SiteRecord:
    name: str
    public_key: bytes
    registered_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class TokenRecord:
    """An admin bearer token as the store knows it: its name and role, never the secret."""

    name: str
    role: str
    created_at: float


@dataclass(frozen=True)
class RunRecord:
    id: str
    name: str
    config: RunConfig | None
    """None when the stored configuration no longer validates (`config_problem` says why)."""
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    config_problem: str | None = None

    @property
    def checked_config(self) -> RunConfig:
        """The run's configuration, or a StoreError that names the run and what is wrong with
        its stored record (a state written by a damaged disk or an older, laxer version): the
        run fails with this message, the server and every other run go on."""
        if self.config is None:
            raise StoreError(
                f"run {self.id}: its stored configuration no longer validates "
                f"({self.config_problem})"
            )
        return self.config


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
class FitParticipation:
    """A fit task of a run with the round and attempt it was offered in
    (`Store.fit_participations`)."""

    round: int
    attempt: int
    task: Participation


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


@dataclass(frozen=True)
class Event:
    """One recorded event: what happened (`kind`), when, to which run if any, and the fields
    its kind carries (a site, a round and attempt, an error...)."""

    id: int
    at: float
    kind: str
    run_id: str | None
    fields: dict[str, Any]

    def flat(self) -> dict[str, Any]:
        """The event as the admin API sends it: its fields beside id, at, kind and run_id."""
        return {
            "id": self.id,
            "at": self.at,
            "kind": self.kind,
            "run_id": self.run_id,
            **self.fields,
        }


BASELINE_ACTIVE = ("queued", "running")
BASELINE_FINAL = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class BaselineRecord:
    """A centralised baseline job: its spec as submitted, where it stands, what it produced (the
    admin API answers it as it is)."""

    id: str
    task: str
    status: str
    """queued, running, completed, failed or cancelled."""
    spec: dict[str, Any]
    """The BaselineSpec the job was submitted with."""
    created_at: float
    started_at: float | None
    finished_at: float | None
    pid: int | None
    """The launcher's process (it leads the job's process group)."""
    out_dir: str | None
    progress: dict[str, Any] | None
    """The worker's latest progress line: step, loss, elapsed_s, samples_per_s, tokens_per_s."""
    result: dict[str, Any] | None
    """The worker's result.json: train and eval loss, eval accuracy and the task's other eval
    metrics, throughput, peak memory and state bytes per rank, wall time."""
    error: str | None
    log_tail: str | None
    """The last 4 KB of the job's log, once it has ended."""

    @property
    def active(self) -> bool:
        return self.status in BASELINE_ACTIVE


@dataclass(frozen=True)
class Totals:
    """Store.totals(): rows of label values and numbers, read in one go."""

    runs: list[tuple[str, str, str]]
    """(run id, name, status)"""
    rounds: list[tuple[str, str, int]]
    """(run id, completed|aborted, attempts)"""
    round_durations: list[tuple[str, str, float]]
    """(run id, status, seconds) of every finished attempt"""
    task_durations: list[tuple[str, int, int, float]]
    """(fit|evaluate, bucket index into the bounds given, tasks, their seconds summed) of the
    tasks sites reported on"""
    secagg: list[dict[str, Any]]
    """each SecAgg round's record (stages, their timings and dropouts)"""
    traffic: list[tuple[str, int, int]]
    """(run id, bytes received from sites, bytes sent to sites)"""
    refused: list[tuple[str, int]]
    """(refusal code, uploads refused)"""
    staleness: list[tuple[str, int, int]]
    """(run id, staleness, updates applied with it) of async runs"""
    site_epsilon: list[tuple[str, str, float]]
    """(run id, site, ε the site last reported spent)"""
    central_epsilon: list[tuple[str, float]]
    """(run id, the run's central ε so far)"""
    baselines: list[tuple[str, int]]
    """(status, jobs)"""
