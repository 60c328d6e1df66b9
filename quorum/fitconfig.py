"""The configuration a site receives with each fit and evaluate task (`TaskOffer.config_json`).

On the wire it is one flat JSON object, as it always was: the run's `site_config` (settings of
the run's task, such as `lr` or `local_epochs`, which Quorum passes through untouched) with
Quorum's own entries on top. `FitConfig` names those entries and their types once, for the
server that builds the object and the site that reads it back: a site refuses an offer whose
config does not fit with an error naming the entry, and a run whose `site_config` sets one of
them to the wrong type is refused when it is submitted. A `SiteTask` (a Flower app too) still
receives the plain mapping (`as_mapping`).

New entries are new optional fields: a site that predates one keeps it among the task's
settings, and a config without it still reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quorum.errors import TaskError
from quorum.wire.codecs import CompressionConfig


class FitConfig(BaseModel):
    """Quorum's entries of a task's config; every other entry is one of the run's settings.

    Strict: `3.0` is not a round and `"3"` not a seed (JSON gives every value its own type).
    """

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    round: int | None = Field(
        None, ge=0, description="the server's round (async evaluation: the model's version)"
    )
    seed: int | None = Field(None, description="the run's seed, which drives the site's sampling")
    run_id: str | None = Field(
        None, min_length=1, description="the run, by which a site under DP keys its budget"
    )
    rounds: int | None = Field(
        None, ge=1, description="the run's planned rounds, for which a site under DP calibrates"
    )
    model_version: int | None = Field(
        None, ge=0, description="async: the version of the model the fit starts from"
    )
    proximal_mu: float | None = Field(None, ge=0, description="FedProx: the proximal term's mu")
    compression: CompressionConfig | None = Field(
        None, description="how the site encodes its update (absent: the trained model as is)"
    )

    @classmethod
    def for_fit(
        cls,
        settings: Mapping[str, Any],
        *,
        round_no: int,
        seed: int,
        run_id: str,
        rounds: int,
        model_version: int | None = None,
        compression: CompressionConfig | None = None,
    ) -> FitConfig:
        """A fit task's config: the run's settings (and the strategy's, such as FedProx's
        `proximal_mu`) with the round's entries on top."""
        entries: dict[str, Any] = {
            "round": round_no,
            "seed": seed,
            "run_id": run_id,
            "rounds": rounds,
        }
        if model_version is not None:
            entries["model_version"] = model_version
        if compression is not None and compression.upload != "none":
            entries["compression"] = compression.model_dump()
        return cls.model_validate({**settings, **entries})

    @classmethod
    def for_evaluate(cls, settings: Mapping[str, Any], *, round_no: int) -> FitConfig:
        """An evaluate task's config: the run's settings and the round."""
        return cls.model_validate({**settings, "round": round_no})

    @classmethod
    def read(cls, config: Mapping[str, Any]) -> FitConfig:
        """Quorum's entries of a config a task was given; raises TaskError naming the entry
        that does not fit."""
        try:
            return cls.model_validate(config)
        except ValidationError as exc:
            raise TaskError(f"the task's config does not fit: {_problems(exc)}") from None

    @classmethod
    def from_json(cls, text: str) -> FitConfig:
        """The config of a task offer (an empty text is an empty config); raises TaskError."""
        try:
            return cls.model_validate_json(text or "{}")
        except ValidationError as exc:
            raise TaskError(f"the task offer's config does not fit: {_problems(exc)}") from None

    @staticmethod
    def check_settings(settings: Mapping[str, Any]) -> None:
        """Raises ValueError when a run's settings give one of Quorum's entries the wrong type
        (the server puts its own on top for a fit, but an evaluation would carry it)."""
        try:
            FitConfig.model_validate(settings)
        except ValidationError as exc:
            raise ValueError(_problems(exc)) from None

    def as_mapping(self) -> dict[str, Any]:
        """The config as a `SiteTask` receives it: every entry the server sent, and no other,
        but `compression` (how the agent encodes the update is no business of the task's)."""
        return self.model_dump(exclude_unset=True, exclude={"compression"})

    def to_json(self) -> str:
        """The wire form (`TaskOffer.config_json`)."""
        return json.dumps(self.model_dump(exclude_unset=True))


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(the whole config)'}: {err['msg']}"
        for err in exc.errors()
    )
