"""Which sites a simulation has and where they run (quorum.sim.plan), its settings' checks, and
the report's parts for large runs (condensed table, task metrics, partition plot, TensorBoard)."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest

from quorum.config import SimFile, load
from quorum.errors import ConfigError
from quorum.sim import plan, report
from tests.vector_task import labelled
from tests.vector_task import task as vector_task


def sim(**settings: Any) -> SimFile:
    table: dict[str, Any] = {"run": {"task": "tests.vector_task:task"}, **settings}
    return SimFile.model_validate(table)


def test_generated_sites_take_their_data_string_and_listed_entries_override_them() -> None:
    config = sim(
        sim={"num_sites": 12, "site_data": "delta=0.1,n={index}"},
        sites=[
            {"name": "site-0003", "data": "n=99", "dp": {"epsilon": 2.0}},
            {"name": "extra", "data": "n=5"},
        ],
    )
    planned = plan.plan(config, vector_task, pathlib.Path("."))
    by_name = {s.name: s for s in planned.sites}
    assert len(planned.sites) == 13 and planned.parts is None
    assert by_name["site-0000"].data == "delta=0.1,n=0"
    assert by_name["site-0011"].data == "delta=0.1,n=11"
    assert by_name["site-0003"].data == "n=99"
    assert by_name["site-0003"].dp is not None and by_name["site-0003"].dp.epsilon == 2.0
    assert by_name["extra"].data == "n=5" and by_name["site-0004"].dp is None


def test_names_are_padded_to_sort_as_numbers() -> None:
    assert plan.site_name(7, 10) == "site-0007"
    assert plan.site_name(12_345, 100_000) == "site-12345"
    assert plan.site_name(7, 100_000) == "site-00007"


def test_a_partition_gives_each_site_its_part_and_natural_sites_their_owner() -> None:
    task = labelled
    config = sim(
        sim={"num_sites": 6, "data": "d", "partition": {"kind": "dirichlet", "alpha": 1.0}}
    )
    planned = plan.plan(config, task, pathlib.Path("."))
    assert planned.parts is not None and len(planned.parts) == 6
    assert [s.part for s in planned.sites] == list(range(6))
    assert sum(len(p) for p in planned.parts) == 60
    again = plan.plan(config, task, pathlib.Path("."))
    assert again.parts is not None
    assert all(np.array_equal(a, b) for a, b in zip(planned.parts, again.parts, strict=True))

    natural = sim(sim={"data": "d", "partition": {"kind": "natural"}})
    sites = plan.plan(natural, task, pathlib.Path(".")).sites
    assert [(s.name, s.owner) for s in sites] == [
        ("site-0000", "w"),
        ("site-0001", "x"),
        ("site-0002", "y"),
        ("site-0003", "z"),
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sim": {"num_sites": 3}}, "have no data"),
        ({"sim": {"num_sites": 3, "data": "d", "partition": {"kind": "iid"}}}, "Partitionable"),
    ],
)
def test_sites_without_data_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan.plan(sim(**settings), vector_task, pathlib.Path("."))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sim.num_sites=0", "num_sites"),
        ('sim.partition.kind="iid"', "set it"),
        ('sim.data="d"', "needs sites"),
        ("sim.hosts=0", "hosts"),
        ('sim.backend="mpi"', "backend"),
    ],
)
def test_simulation_settings_are_checked(
    tmp_path: pathlib.Path, override: str, message: str
) -> None:
    path = tmp_path / "sim.toml"
    path.write_text('[run]\ntask = "m:t"\n')
    with pytest.raises(ConfigError, match=message):
        load(SimFile, path, [override])
    both = ["sim.num_sites=4", 'sim.data="d"', 'sim.partition.kind="iid"', 'sim.site_data="x"']
    with pytest.raises(ConfigError, match="two ways"):
        load(SimFile, path, both)


def test_hosts_follow_the_cores_and_sites_are_dealt_round_robin() -> None:
    config = sim(sim={"num_sites": 1000, "site_data": "n=1"})
    assert plan.layout(config, 1000, cpus=2) == plan.HostLayout(hosts=2, slots=1, keep=16)
    assert plan.layout(config, 1, cpus=8).hosts == 1
    assert plan.layout(config, 1000, cpus=8) == plan.HostLayout(hosts=8, slots=1, keep=16)
    config.sim.hosts, config.sim.slots_per_host = 1, 4
    assert plan.layout(config, 1000, cpus=2) == plan.HostLayout(hosts=1, slots=4, keep=16)
    sites = plan.plan(config, vector_task, pathlib.Path(".")).sites[:5]
    dealt = plan.deal(sites, 2)
    assert [[s.name for s in host] for host in dealt] == [
        ["site-0000", "site-0002", "site-0004"],
        ["site-0001", "site-0003"],
    ]


def _result(rounds: int, extra: bool = True) -> dict[str, Any]:
    rows = [
        {
            "round": r,
            "accuracy_mean_sites": 0.5 + r / 1000,
            "accuracy_pooled_test": 0.5,
            "loss": 1.0,
            "wall_time_s": float(r),
            "secagg": None,
            "gossip": None,
            "evaluate": {"accuracy": 0.5, **({"macro_f1": 0.25 + r / 1000} if extra else {})},
            "fit": {"loss": 1.0},
        }
        for r in range(1, rounds + 1)
    ]
    return {
        "run_id": "run-x",
        "strategy": "fedavg",
        "seed": 0,
        "status": "completed",
        "rounds": rows,
        "baselines": None,
        "privacy": None,
    }


def _rendered(table: Any) -> str:
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def _rounds_shown(text: str) -> list[int]:
    return [int(line.split("│")[1]) for line in text.splitlines() if line.startswith("│")]


def test_a_long_run_prints_every_kth_round_and_the_task_metrics() -> None:
    text = _rendered(report.table(_result(100)))
    assert _rounds_shown(text) == list(range(5, 101, 5))
    assert "macro_f1" in text and "0.350" in text  # round 100's macro_f1
    assert "one round in 5; all 100 in the report" in text
    short = _rendered(report.table(_result(3, extra=False), every=None))
    assert "macro_f1" not in short and "one round in" not in short
    assert _rounds_shown(short) == [1, 2, 3]
    assert _rounds_shown(_rendered(report.table(_result(7), every=2))) == [2, 4, 6, 7]


def test_the_partition_plot_and_tensorboard_scalars_are_written(tmp_path: pathlib.Path) -> None:
    section = {
        "kind": "dirichlet",
        "alpha": 0.5,
        "shards_per_site": 2,
        "power": 1.5,
        "data": "d",
        "classes": ["0", "1", "2"],
        "sites": [{"site": f"s{i}", "size": 6, "labels": [i, 6 - i, 0]} for i in range(7)],
    }
    path = tmp_path / "partition.png"
    report.plot_partition(section, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    many = {  # a natural partition by speaker: a label per site, drawn as a heatmap
        **section,
        "kind": "natural",
        "classes": [str(i) for i in range(300)],
        "sites": [
            {"site": f"s{i}", "size": 3, "labels": [3 * (j == i) for j in range(300)]}
            for i in range(300)
        ],
    }
    report.plot_partition(many, tmp_path / "many.png")
    assert (tmp_path / "many.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report.tensorboard(_result(4), tmp_path / "tb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "run-x"))
    events.Reload()
    assert "evaluate/macro_f1" in events.Tags()["scalars"]
    steps = [e.step for e in events.Scalars("evaluate/macro_f1")]
    assert steps == [1, 2, 3, 4]
    assert events.Scalars("evaluate/macro_f1")[-1].value == pytest.approx(0.254)
