"""Unit tests of quorum.config: TOML files, `--set` overrides, errors that name the key."""

from __future__ import annotations

import pathlib

import pytest

from quorum.config import (
    RunConfig,
    ServerFile,
    SimFile,
    load,
    load_runs,
    parse_override,
    validate,
)
from quorum.errors import ConfigError

SIM_TOML = """
[sim]
timeout_s = 60.0

[server]
federation_address = "127.0.0.1:9000"

[run]
name = "heart"
task = "examples.heart:task"
rounds = 3

[run.site_config]
lr = 0.05
epochs = 1

[[sites]]
name = "cleveland"
data = "cleveland.csv"

[[sites]]
name = "hungary"
data = "hungary.csv"
"""


@pytest.fixture
def sim_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "sim.toml"
    path.write_text(SIM_TOML)
    return path


def test_load_reads_the_file(sim_file: pathlib.Path) -> None:
    cfg = load(SimFile, sim_file)
    assert cfg.sim.timeout_s == 60.0
    assert cfg.server.federation_address == "127.0.0.1:9000"
    assert cfg.run.name == "heart"
    assert cfg.run.rounds == 3
    assert cfg.run.site_config == {"lr": 0.05, "epochs": 1}
    assert [(s.name, s.data) for s in cfg.sites] == [
        ("cleveland", "cleveland.csv"),
        ("hungary", "hungary.csv"),
    ]
    # defaults fill the rest
    assert cfg.run.strategy == "fedavg"
    assert cfg.server.server_id == "quorum"


def test_overrides_replace_nested_keys(sim_file: pathlib.Path) -> None:
    cfg = load(
        SimFile,
        sim_file,
        [
            "run.rounds=15",
            "run.server_learning_rate=0.01",
            "run.strategy=fedyogi",  # unquoted string
            "server.server_id='consortium-a'",  # quoted TOML string
            "sim.baselines=false",
            "sim.seed=7",
        ],
    )
    assert cfg.run.rounds == 15
    assert cfg.run.server_learning_rate == 0.01
    assert cfg.run.strategy == "fedyogi"
    assert cfg.server.server_id == "consortium-a"
    assert cfg.sim.baselines is False
    assert cfg.sim.seed == 7
    # untouched values survive
    assert cfg.run.name == "heart"
    assert cfg.sim.timeout_s == 60.0


def test_later_overrides_win(sim_file: pathlib.Path) -> None:
    cfg = load(SimFile, sim_file, ["run.rounds=4", "run.rounds=9"])
    assert cfg.run.rounds == 9


def test_overrides_into_free_form_site_config(sim_file: pathlib.Path) -> None:
    cfg = load(
        SimFile,
        sim_file,
        [
            "run.site_config.lr=0.1",  # replaces the file's value
            "run.site_config.optimizer=adam",  # new key, unquoted string
            "run.site_config.schedule.warmup=3",  # nested table made on the fly
            "run.site_config.schedule.kind=cosine",
            "run.site_config.layers=[64, 32]",
            "run.site_config.dropout=true",
        ],
    )
    assert cfg.run.site_config == {
        "lr": 0.1,
        "epochs": 1,
        "optimizer": "adam",
        "schedule": {"warmup": 3, "kind": "cosine"},
        "layers": [64, 32],
        "dropout": True,
    }


def test_overrides_without_a_file_start_from_defaults() -> None:
    cfg = load(ServerFile, None, ["server.admin_address=0.0.0.0:9999"])
    assert cfg.server.admin_address == "0.0.0.0:9999"
    assert cfg.runs == []
    assert cfg.server.state_dir == pathlib.Path("quorum-state")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("15", 15),
        ("-3", -3),
        ("0.25", 0.25),
        ("1e-3", 1e-3),
        ("true", True),
        ("false", False),
        ('"quoted"', "quoted"),
        ("'single'", "single"),
        ('"15"', "15"),
        ("[1, 2, 3]", [1, 2, 3]),
        ('["a", "b"]', ["a", "b"]),
        ("{ a = 1 }", {"a": 1}),
        ("fedyogi", "fedyogi"),
        ("hello world", "hello world"),
        ("a=b", "a=b"),
        ("", ""),
        ("True", "True"),  # not a TOML boolean: stays a string
        ("1.2.3", "1.2.3"),
    ],
)
def test_parse_override_reads_toml_literals_and_falls_back_to_str(
    raw: str, expected: object
) -> None:
    keys, value = parse_override(f"run.site_config.x={raw}")
    assert keys == ["run", "site_config", "x"]
    assert value == expected
    assert type(value) is type(expected)


def test_parse_override_strips_the_key() -> None:
    assert parse_override("  run.rounds =5") == (["run", "rounds"], 5)


@pytest.mark.parametrize("item", ["run.rounds", "", "=5", "  =5", "novalue"])
def test_override_without_equals_or_key_is_refused(item: str) -> None:
    with pytest.raises(ConfigError, match=r"is not of the form section\.key=value"):
        load(ServerFile, None, [item])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.nonsense=1", r"unknown config key 'run\.nonsense' \('nonsense' is not a setting\)"),
        ("bogus.key=1", r"unknown config key 'bogus\.key' \('bogus' is not a setting\)"),
        ("bogus=1", r"unknown config key 'bogus'"),
        ("run.seed.deeper=1", r"unknown config key 'run\.seed\.deeper' \(run\.seed is a value\)"),
        ("server.server_id.x.y=1", r"unknown config key 'server\.server_id\.x\.y'"),
        ("sites.name=x", r"config key 'sites\.name' points into a list"),
    ],
)
def test_unknown_keys_are_errors_that_name_the_key(
    sim_file: pathlib.Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(SimFile, sim_file, [override])


@pytest.mark.parametrize("override", ["run.site_config.lr.x=1", "run.rounds.deeper=1"])
def test_a_path_into_a_scalar_of_the_file_is_refused(sim_file: pathlib.Path, override: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(SimFile, sim_file, [override])


@pytest.mark.parametrize("override", ["run.site_config.lr.x=1", "run.rounds.deeper=1"])
def test_a_path_into_a_scalar_of_the_file_says_it_is_a_value(
    sim_file: pathlib.Path, override: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(SimFile, sim_file, [override])
    assert "list" not in str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.rounds=abc", r"run\.rounds: Input should be a valid integer"),
        ("run.rounds=1.5", r"run\.rounds:"),
        ("run.rounds=[1]", r"run\.rounds:"),
        ("run.strategy=sgd", r"run\.strategy: Input should be 'fedavg'"),
        ("run.site_config=5", r"run\.site_config:"),
        ("sim.baselines=maybe", r"sim\.baselines:"),
        ("run.rounds=0", r"run\.rounds: Input should be greater than or equal to 1"),
        ("run.fraction_fit=0", r"run\.fraction_fit: Input should be greater than 0"),
        ("run.fraction_fit=1.5", r"run\.fraction_fit: Input should be less than or equal to 1"),
        ("run.beta1=1.0", r"run\.beta1: Input should be less than 1"),
        ("server.heartbeat_interval_s=-1", r"server\.heartbeat_interval_s: Input should be"),
        ("server.stream_window_kb=16", r"server\.stream_window_kb: .*at least 64 KiB; 0 lets"),
        ("server.stream_window_kb=-1", r"server\.stream_window_kb: Input should be greater"),
        ("server.stream_window_kb=4194304", r"server\.stream_window_kb: Input should be less"),
        ("run.min_fit_sites=0", r"run\.min_fit_sites:"),
    ],
)
def test_ill_typed_or_out_of_range_values_name_the_key(
    sim_file: pathlib.Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load(SimFile, sim_file, [override])
    assert str(sim_file) in str(info.value)


def test_errors_in_the_file_name_the_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('[server]\nheartbeat_interval_s = "soon"\nextra_thing = 1\n')
    with pytest.raises(ConfigError) as info:
        load(ServerFile, path)
    text = str(info.value)
    assert "server.heartbeat_interval_s" in text
    assert "server.extra_thing" in text


def test_missing_required_key_is_named(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text('[run]\nname = "x"\n[[sites]]\nname = "a"\ndata = "a.csv"\n')
    with pytest.raises(ConfigError, match=r"run\.task: Field required"):
        load(SimFile, path)


def test_sim_file_needs_at_least_one_site(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text('sites = []\n[run]\ntask = "m:t"\n')
    with pytest.raises(ConfigError, match=r"sites:"):
        load(SimFile, path)


def test_invalid_toml_file_is_a_config_error_naming_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[run\ntask = ")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load(SimFile, path)


def test_missing_file_is_a_config_error_naming_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"cannot read config .*absent\.toml"):
        load(SimFile, path)


def test_a_directory_is_not_a_config_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config"):
        load(SimFile, tmp_path)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[run]\ntask = "m:t"\nname = "Zürich"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml"):
        load(SimFile, path)


# --- RunConfig validator -----------------------------------------------------------------------


def test_max_fit_sites_below_min_fit_sites_is_refused(sim_file: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"max_fit_sites is below min_fit_sites"):
        load(SimFile, sim_file, ["run.min_fit_sites=3", "run.max_fit_sites=2"])
    with pytest.raises(ValueError, match=r"max_fit_sites is below min_fit_sites"):
        RunConfig(task="m:t", min_fit_sites=3, max_fit_sites=2)


def test_max_num_examples_is_a_weight_a_float64_holds_exactly() -> None:
    assert RunConfig(task="m:t", max_num_examples=2**53).max_num_examples == 2**53
    # Beyond, an upload's weight would pass its check and then overflow the store's integers.
    with pytest.raises(ValueError, match="max_num_examples"):
        RunConfig(task="m:t", max_num_examples=2**63)


def test_max_fit_sites_equal_to_min_is_accepted() -> None:
    cfg = RunConfig(task="m:t", min_fit_sites=3, max_fit_sites=3)
    assert (cfg.min_fit_sites, cfg.max_fit_sites) == (3, 3)


def test_min_available_sites_is_raised_to_min_fit_sites(sim_file: pathlib.Path) -> None:
    cfg = RunConfig(task="m:t", min_fit_sites=4)
    assert cfg.min_available_sites == 4
    cfg = RunConfig(task="m:t", min_fit_sites=2, min_available_sites=5)
    assert cfg.min_available_sites == 5  # never lowered
    loaded = load(SimFile, sim_file, ["run.min_fit_sites=3", "run.min_available_sites=1"])
    assert loaded.run.min_available_sites == 3


def test_run_config_round_trips_through_json() -> None:
    cfg = RunConfig(task="m:t", rounds=4, site_config={"a": [1, 2], "b": {"c": "d"}})
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_server_file_with_runs(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        '[server]\nstate_dir = "st"\n\n[[runs]]\ntask = "m:a"\n\n[[runs]]\ntask = "m:b"\n'
        "rounds = 2\n"
    )
    cfg = load(ServerFile, path, ["server.server_id=hq"])
    assert cfg.server.state_dir == pathlib.Path("st")
    assert cfg.server.server_id == "hq"
    assert [(r.task, r.rounds) for r in cfg.runs] == [("m:a", 10), ("m:b", 2)]


def test_secure_aggregation_settings_are_set_and_checked(sim_file: pathlib.Path) -> None:
    sim = load(
        SimFile,
        sim_file,
        ["run.secagg.enabled=true", "run.secagg.threshold=3", "run.secagg.neighbours=8"],
    )
    assert sim.run.secagg.enabled and sim.run.secagg.threshold == 3
    assert isinstance(sim.run.secagg.threshold, int)
    assert load(SimFile, sim_file, ["run.secagg.threshold=0.8"]).run.secagg.threshold == 0.8
    for bad, needle in [
        ("run.secagg.threshold=1", "at least 2"),
        ("run.secagg.threshold=0.5", "above 0.5"),
        ("run.secagg.threshold=1.5", "at most 1"),
        ("run.secagg.quantization_bits=31", "quantization_bits"),
        ("run.secagg.cohort=3", "cohort"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load(SimFile, sim_file, [bad])


def test_the_secure_threshold_is_a_majority_of_each_neighbourhood() -> None:
    from quorum.server.secure_fit import threshold_for

    assert threshold_for(2 / 3, 4) == 3
    assert threshold_for(2 / 3, 10) == 7
    assert threshold_for(0.51, 2) == 2  # never below 2
    assert threshold_for(6, 10) == 6


def test_a_site_budget_overrides_the_default_one(sim_file: pathlib.Path) -> None:
    from quorum.sim.plan import plan
    from tests.vector_task import task

    text = sim_file.read_text().replace(
        'name = "hungary"\ndata = "hungary.csv"',
        'name = "hungary"\ndata = "hungary.csv"\ndp = { epsilon = 3.0, accountant = "prv" }',
    )
    sim_file.write_text(text)
    sim = load(SimFile, sim_file, ["site.dp.epsilon=1.0"])
    by_name = {s.name: s.dp for s in plan(sim, task, sim_file.parent).sites}
    assert by_name["cleveland"] is not None and by_name["cleveland"].epsilon == 1.0
    assert by_name["hungary"] is not None and by_name["hungary"].epsilon == 3.0
    assert by_name["hungary"].accountant == "prv"
    sim.site.dp = None
    assert plan(sim, task, sim_file.parent).sites[0].dp is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "async", "strategy": "fedyogi"}, "fedavg or fedprox"),
        ({"mode": "gossip", "strategy": "fedadam"}, "fedavg or fedprox"),
        (
            {"mode": "async", "central_dp": {"enabled": True}, "secagg": {"enabled": True}},
            "distributed DP under secure aggregation is sync only",
        ),
        (
            {"mode": "async", "central_dp": {"enabled": True, "adaptive": True}},
            "adaptive clipping is not available for async",
        ),
        ({"mode": "async", "buffer_size": 1, "secagg": {"enabled": True}}, "buffer_size >= 2"),
        ({"mode": "gossip", "secagg": {"enabled": True}}, "end-to-end encrypted"),
        ({"mode": "gossip", "central_dp": {"enabled": True}}, "end-to-end encrypted"),
        ({"mode": "async", "max_staleness": -1}, "max_staleness"),
        ({"mode": "async", "server_momentum": 1.0}, "server_momentum"),
    ],
)
def test_async_and_gossip_settings_that_do_not_fit_are_refused(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(RunConfig, None, values={"task": "m:t", **settings})


def test_async_and_gossip_defaults() -> None:
    run = load(RunConfig, None, values={"task": "m:t", "mode": "async"})
    assert (run.buffer_size, run.staleness_exponent, run.max_staleness) == (3, 0.5, 10)
    assert run.max_concurrency is None and run.max_wall_time_s is None
    gossip = load(RunConfig, None, values={"task": "m:t", "mode": "gossip"})
    assert (gossip.topology, gossip.degree) == ("exponential", 2)


ROBUST = {"task": "m:t", "max_fit_sites": 10}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"strategy": "krum", "secagg": {"enabled": True}},
            "under secure aggregation the server sees only their sum",
        ),
        ({"norm_bound": 1.0, "secagg": {"enabled": True}}, "sees only their sum"),
        ({"strategy": "fedmedian", "mode": "async"}, "async runs step on a few buffered"),
        ({"strategy": "fedtrimmedavg", "mode": "gossip"}, "gossip runs have no server aggregate"),
        ({"norm_bound": 1.0, "mode": "async"}, "use mode = sync"),
        ({"strategy": "krum", "central_dp": {"enabled": True}}, "does not combine with central"),
        ({"strategy": "fedmedian", "max_fit_sites": None}, "set max_fit_sites"),
        ({"strategy": "krum", "num_malicious_nodes": 4}, "needs n > 2f \\+ 2.*max_fit_sites is 10"),
        ({"strategy": "bulyan", "num_malicious_nodes": 2}, "needs n >= 4f \\+ 3, at least 11"),
        ({"strategy": "fedmedian", "num_malicious_nodes": 2}, "apply to krum, multikrum"),
        ({"strategy": "fedavg", "num_malicious_nodes": 2}, "apply to krum, multikrum"),
        ({"strategy": "krum", "num_nodes_to_select": 2}, "applies to multikrum"),
        ({"strategy": "fedtrimmedavg", "beta": 0.5}, "beta"),
    ],
)
def test_robust_settings_that_do_not_fit_are_refused(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(RunConfig, None, values={**ROBUST, **settings})


def test_robust_settings_are_read_with_flowers_names() -> None:
    run = load(
        RunConfig,
        None,
        values={
            **ROBUST,
            "strategy": "multikrum",
            "num_malicious_nodes": 2,
            "num_nodes_to_select": 5,
        },
    )
    rule = run.robust_rule
    assert (rule.rule, rule.num_malicious_nodes, rule.num_nodes_to_select) == ("multikrum", 2, 5)
    assert run.robust_memory_mb == 2048
    fedavg = load(RunConfig, None, values={"task": "m:t", "norm_bound": 2.5}).robust_rule
    assert (fedavg.rule, fedavg.norm_bound, fedavg.keeps_updates) == (None, 2.5, False)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"site_config": {"lr": float("nan")}}, "NaN or an infinity"),
        ({"site_config": {"w": [1.0, float("-inf")]}}, "NaN or an infinity"),
        ({"site_config": {"name": "\udcff"}}, "not valid UTF-8"),
        ({"task": "m:\udcff"}, "not valid UTF-8"),
        ({"site_config": {"blob": "x" * (1024 * 1024)}}, "at most 1,048,576"),
        ({"round_timeout_s": float("inf")}, "round_timeout_s: Input should be a finite number"),
        ({"central_dp": {"noise_multiplier": float("nan")}}, "finite number"),
    ],
)
def test_a_run_the_store_or_the_wire_could_not_carry_is_refused(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(RunConfig, {"task": "m:t", **values}, "api")


def test_infinities_are_refused_alike_from_a_file_and_from_set(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text("[server]\nheartbeat_interval_s = inf\n")
    with pytest.raises(ConfigError, match="heartbeat_interval_s: Input should be a finite number"):
        load(ServerFile, path)
    path.write_text("[server]\n")
    with pytest.raises(ConfigError, match="session_timeout_s: Input should be a finite number"):
        load(ServerFile, path, ["server.session_timeout_s=nan"])
    run = validate(RunConfig, {"task": "m:t", "site_config": {"x": -1e308}}, "api")
    assert RunConfig.model_validate_json(run.model_dump_json()) == run  # reads back as written


def test_the_admin_token_may_come_from_a_file(tmp_path: pathlib.Path) -> None:
    # A mounted secret (Kubernetes, compose, a systemd credential) keeps the token out of the
    # config and the command line.
    secret = tmp_path / "admin.token"
    secret.write_text("s3cret-token\n")
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nadmin_token_file = "{secret}"\n')
    assert load(ServerFile, config).server.admin_token == "s3cret-token"
    with pytest.raises(ConfigError, match="not both"):
        load(ServerFile, config, ["server.admin_token=other"])
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load(ServerFile, config)
    secret.unlink()
    with pytest.raises(ConfigError, match=r"cannot read admin_token_file .*No such file"):
        load(ServerFile, config)


def test_a_file_to_submit_names_its_runs(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text('task = "m:t"\nrounds = 3\n')
    assert [r.rounds for r in load_runs(run, ["rounds=5"])] == [5]
    server = tmp_path / "server.toml"
    server.write_text(
        '[server]\nstate_dir = "s"\n\n[[runs]]\ntask = "m:t"\n\n[[runs]]\ntask = "n:t"\n'
    )
    assert [r.task for r in load_runs(server)] == ["m:t", "n:t"]
    # A server config without runs is not a run missing its task.
    server.write_text('[server]\nstate_dir = "s"\n')
    with pytest.raises(ConfigError, match=r"has no run to submit: a server config's runs are"):
        load_runs(server)
