"""The one exception hierarchy of Quorum.

    QuorumError
    ├── ConfigError          a config file, override or run submission is invalid
    ├── AuthError            an unknown, revoked or unproven identity; a bad admin token
    ├── NotFoundError        a run, round, site or blob that does not exist
    ├── ConflictError        a request that clashes with the current state (duplicate site...)
    ├── UploadRejected       an upload or result that fails validation; carries a reason code
    ├── BlobError            bytes that are not a valid safetensors blob
    ├── TaskError            the user's site task failed or is not a valid task
    │   └── BudgetExhausted  a site's privacy budget for the run is spent: it refuses to train
    ├── StoreError           the state store or a checkpoint is unusable
    ├── BaselineError        a centralised baseline job cannot start or failed (a missing
    │                        `quorum-fl[llm]` extra, a rank that exited non-zero)
    ├── SecAggError          a secure-aggregation message breaks the protocol, or a cohort
    │                        cannot recover its sum (too few sites left, bad shares)
    └── GossipError          a gossip message breaks the protocol: a round key its site did not
                             sign, a model that fails authentication or is not the run's model

Boundaries translate these: the federation service into gRPC status codes and receipts, the
admin API into HTTP statuses, the CLI into a one-line message and a non-zero exit status.
"""

from __future__ import annotations


class QuorumError(Exception):
    """Base of every error Quorum raises on purpose."""


class ConfigError(QuorumError):
    """A configuration value is missing, unknown or of the wrong type."""


class AuthError(QuorumError):
    """An identity could not be established or is not allowed."""


class NotFoundError(QuorumError):
    """The named object does not exist."""


class ConflictError(QuorumError):
    """The request conflicts with existing state."""


class BlobError(QuorumError):
    """Bytes that do not form a valid safetensors blob."""


class UploadRejected(QuorumError):
    """An upload or task result was refused; `code` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TaskError(QuorumError):
    """A site task is invalid or failed."""


class BudgetExhausted(TaskError):
    """The site's differential-privacy budget for this run is spent; it refuses further
    training (the server records a refusal and the round goes on without it)."""

    code = "budget_exhausted"
    """How the refusal's error starts, for the server and the privacy ledger to recognise."""


class StoreError(QuorumError):
    """The state store or a checkpoint cannot be used."""


class BaselineError(QuorumError):
    """A centralised baseline job (`quorum baseline run`) cannot run or failed."""


class SecAggError(QuorumError):
    """A secure-aggregation message breaks the protocol, or a round cannot recover its sum."""


class GossipError(QuorumError):
    """A gossip round's message breaks the protocol; `code` names why (`bad_key_signature`,
    `relay_tampered`, `bad_model`...), for the pair's skip record."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
