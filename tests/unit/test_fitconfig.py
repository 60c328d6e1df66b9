"""Unit tests of the task config a site receives with each offer (`quorum.fitconfig`): the wire
form the server writes, and what a site accepts and refuses when it reads it back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from quorum.client.flower import flower_config
from quorum.config import RunConfig, validate
from quorum.errors import ConfigError, TaskError
from quorum.fitconfig import FitConfig

SETTINGS: dict[str, Any] = {"lr": 0.05, "local_epochs": 2, "layers": [4, 2], "opt": {"m": 0.9}}


def test_a_fit_config_is_the_flat_object_sites_always_read() -> None:
    config = FitConfig.for_fit(
        {**SETTINGS, "proximal_mu": 0.01}, round_no=3, seed=7, run_id="r1", rounds=10
    )
    # The dict the server built before FitConfig existed, entry for entry.
    assert json.loads(config.to_json()) == {
        **SETTINGS,
        "proximal_mu": 0.01,
        "round": 3,
        "seed": 7,
        "run_id": "r1",
        "rounds": 10,
    }
    read = FitConfig.from_json(config.to_json())
    assert read == config
    assert read.as_mapping() == config.as_mapping()
    assert (read.round, read.seed, read.run_id, read.rounds) == (3, 7, "r1", 10)
    assert read.model_version is None and "model_version" not in read.as_mapping()


def test_the_rounds_entries_override_a_setting_of_the_same_name() -> None:
    config = FitConfig.for_fit(
        {"round": 99, "seed": 1, "lr": 0.1}, round_no=2, seed=5, run_id="r", rounds=4
    )
    assert (config.round, config.seed) == (2, 5)
    asynchronous = FitConfig.for_fit({}, round_no=2, seed=5, run_id="r", rounds=4, model_version=1)
    assert asynchronous.as_mapping()["model_version"] == 1


def test_an_evaluate_config_holds_the_settings_and_the_round_only() -> None:
    assert FitConfig.for_evaluate(SETTINGS, round_no=4).as_mapping() == {**SETTINGS, "round": 4}


def test_a_site_reads_an_empty_config_and_keeps_entries_it_does_not_know() -> None:
    assert FitConfig.from_json("").as_mapping() == {}
    # An entry a newer server adds reaches the task as one of its settings.
    newer = FitConfig.from_json('{"round": 1, "codec": {"name": "int8"}}')
    assert newer.as_mapping() == {"round": 1, "codec": {"name": "int8"}}


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ('{"round": 3.0}', "round"),
        ('{"round": -1}', "round"),
        ('{"seed": "7"}', "seed"),
        ('{"round": true}', "round"),
        ('{"run_id": ""}', "run_id"),
        ('{"rounds": 0}', "rounds"),
        ('{"proximal_mu": -0.5}', "proximal_mu"),
        ("[1, 2]", "whole config"),
        ("{not json", "whole config"),
    ],
)
def test_a_site_refuses_a_config_that_does_not_fit_naming_the_entry(text: str, entry: str) -> None:
    with pytest.raises(TaskError, match=f"task offer's config does not fit: .*{entry}"):
        FitConfig.from_json(text)


def test_a_task_given_a_mapping_reads_the_same_entries() -> None:
    assert FitConfig.read({"round": 2, "proximal_mu": 0, "lr": 1}).proximal_mu == 0.0
    with pytest.raises(TaskError, match="task's config does not fit: seed"):
        FitConfig.read({"seed": 1.5})


def test_a_run_whose_settings_mistype_a_quorum_entry_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"site_config: .*round: Input should be a valid integer"):
        validate(RunConfig, {"task": "m:t", "site_config": {"round": "first"}}, "test")
    # Quorum's entries with their own types, and any other setting, are the run's to choose.
    run = validate(RunConfig, {"task": "m:t", "site_config": {"seed": 3, "x": "y"}}, "test")
    assert run.site_config == {"seed": 3, "x": "y"}


def test_a_flower_app_receives_the_config_with_its_server_round() -> None:
    config = FitConfig.for_fit(SETTINGS, round_no=3, seed=7, run_id="r1", rounds=10)
    record = flower_config(FitConfig.from_json(config.to_json()).as_mapping())
    assert record["server-round"] == 3 and record["lr"] == 0.05 and record["layers"] == [4, 2]
    assert "opt" not in record  # a ConfigRecord holds scalars and lists of one scalar type
