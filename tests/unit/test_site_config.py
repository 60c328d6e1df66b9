"""Unit tests of the site agent's settings (`quorum client run`): the site config file, its
`--set` overrides and the command's flags, merged by `quorum.config.load_site`."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from quorum.config import ClientDPConfig, SiteDPConfig, load_site
from quorum.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[2]

SITE_TOML = """
[client]
server = "hospital-fl.example.org:8600"
site_key = "site.key"
task = "examples.heart_disease.task:task"
data = "cleveland"
device = "cpu"
root_cert = "ca.pem"
cache_dir = "cache"
seed = 7

[dp]
epsilon = 1.0
delta = 1e-6
max_grad_norm = 2.0
accountant = "prv"
ledger = "site.privacy.json"
"""

NO_FLAGS: dict[str, Any] = {
    "client.server": None,
    "client.site_key": None,
    "client.task": None,
    "client.data": None,
    "client.device": None,
    "client.insecure": None,
    "client.seed": None,
    "dp.epsilon": None,
    "dp.ledger": None,
}
"""What `quorum client run --config FILE` passes when no flag is given: every flag None."""


@pytest.fixture
def site_toml(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "site"
    folder.mkdir()
    path = folder / "site.toml"
    path.write_text(SITE_TOML)
    return path


def test_the_file_holds_every_setting(site_toml: pathlib.Path) -> None:
    site = load_site(site_toml, [], NO_FLAGS)
    client, folder = site.client, site_toml.parent
    assert client.server == "hospital-fl.example.org:8600"
    assert client.task == "examples.heart_disease.task:task"
    assert client.data == "cleveland"  # a bare name, not a file there: to the task unchanged
    assert (client.device, client.seed, client.insecure) == ("cpu", 7, False)
    # Relative paths are read from the file's folder, whatever the working directory.
    assert client.site_key == folder / "site.key"
    assert client.root_cert == folder / "ca.pem"
    assert client.cache_dir == folder / "cache"
    assert site.dp == ClientDPConfig(
        epsilon=1.0,
        delta=1e-6,
        max_grad_norm=2.0,
        accountant="prv",
        ledger=folder / "site.privacy.json",
    )
    assert site.ledger_path == folder / "site.privacy.json"
    # The budget is the one model the rest of the site's DP code takes.
    assert isinstance(site.dp, SiteDPConfig)


def test_a_data_path_in_the_file_is_read_from_its_folder(site_toml: pathlib.Path) -> None:
    (site_toml.parent / "cleveland.data").write_text("1,2,3\n")
    site = load_site(site_toml, ["client.data=cleveland.data"])
    assert site.client.data == str((site_toml.parent / "cleveland.data").resolve())


def test_absolute_paths_in_the_file_are_kept(
    site_toml: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    key = tmp_path / "elsewhere" / "site.key"
    site = load_site(site_toml, [f'client.site_key="{key}"'])
    assert site.client.site_key == key


def test_flags_win_over_the_file_and_their_paths_stay_relative_to_the_working_dir(
    site_toml: pathlib.Path,
) -> None:
    flags = {
        **NO_FLAGS,
        "client.server": "127.0.0.1:9000",
        "client.site_key": pathlib.Path("keys/a.key"),
        "client.data": "hungarian",
        "client.insecure": True,
        "client.seed": 3,
        "dp.epsilon": 0.5,
        "dp.ledger": pathlib.Path("ledgers/a.json"),
    }
    site = load_site(site_toml, [], flags)
    assert site.client.server == "127.0.0.1:9000"
    assert site.client.site_key == pathlib.Path("keys/a.key")
    assert site.client.data == "hungarian"
    assert site.client.insecure is True
    assert site.client.seed == 3
    assert site.dp is not None and site.dp.epsilon == 0.5
    assert site.ledger_path == pathlib.Path("ledgers/a.json")
    # Settings no flag was given for still come from the file.
    assert site.client.device == "cpu"
    assert site.dp.delta == 1e-6 and site.dp.accountant == "prv"
    assert site.client.root_cert == site_toml.parent / "ca.pem"


def test_set_overrides_the_file_and_flags_win_over_set(site_toml: pathlib.Path) -> None:
    site = load_site(site_toml, ["dp.epsilon=0.5", "client.device=cuda", "client.seed=11"])
    assert site.dp is not None and site.dp.epsilon == 0.5
    assert (site.client.device, site.client.seed) == ("cuda", 11)
    site = load_site(site_toml, ["dp.epsilon=0.5"], {**NO_FLAGS, "dp.epsilon": 3.0})
    assert site.dp is not None and site.dp.epsilon == 3.0


def test_set_turns_on_dp_for_a_file_without_a_dp_table(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE_TOML.partition("[dp]")[0])
    assert load_site(path).dp is None
    site = load_site(path, ["dp.epsilon=0.5"])
    assert site.dp == ClientDPConfig(epsilon=0.5)  # δ, clipping norm, accountant: defaults
    assert site.ledger_path == tmp_path / "site.privacy.json"  # beside the (resolved) key


def test_flags_alone_give_the_defaults_the_command_always_had() -> None:
    site = load_site(
        None,
        [],
        {
            **NO_FLAGS,
            "client.server": "127.0.0.1:8600",
            "client.site_key": pathlib.Path("keys/a.key"),
            "client.task": "tests.vector_task:task",
            "client.data": "delta=1",
        },
    )
    client = site.client
    assert (client.server, client.task, client.data) == (
        "127.0.0.1:8600",
        "tests.vector_task:task",
        "delta=1",
    )
    assert client.site_key == pathlib.Path("keys/a.key")
    assert (client.device, client.seed, client.insecure, client.log_format) == (
        "auto",
        0,
        False,
        "text",
    )
    assert client.root_cert is None and client.cache_dir is None
    assert site.dp is None
    assert site.ledger_path == pathlib.Path("keys/a.privacy.json")


def test_dp_flags_alone_take_the_budget_defaults() -> None:
    flags = {
        "client.server": "s:1",
        "client.site_key": pathlib.Path("a.key"),
        "client.task": "m:t",
        "client.data": "d",
        "dp.epsilon": 1.0,
    }
    site = load_site(None, [], flags)
    assert site.dp == ClientDPConfig(epsilon=1.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp")


@pytest.mark.parametrize(
    ("text", "missing", "flags"),
    [
        ("", "client.server, client.site_key, client.task, client.data", "--server, --site-key"),
        ("[client]\n", "client.server, client.site_key", "--task, --data"),
        ('[client]\nserver = "s:1"\ndata = "d"\n', "client.site_key, client.task", "--task"),
    ],
)
def test_required_settings_missing_from_file_and_flags_are_named(
    tmp_path: pathlib.Path, text: str, missing: str, flags: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_site(path, [], NO_FLAGS)
    message = str(info.value)
    assert str(path) in message
    assert f"missing required setting(s) {missing}" in message
    assert flags in message and "[client]" in message


def test_a_flag_supplies_what_the_file_lacks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[client]\nserver = "s:1"\ntask = "m:t"\n')
    flags = {**NO_FLAGS, "client.site_key": pathlib.Path("a.key"), "client.data": "d"}
    site = load_site(path, [], flags)
    assert (site.client.server, site.client.data) == ("s:1", "d")


def test_without_a_file_the_missing_flags_are_named() -> None:
    with pytest.raises(ConfigError, match=r"\(command line\): client: missing .* --site-key"):
        load_site(None, [], {"client.server": "s:1", "client.task": "m:t", "client.data": "d"})


def test_dp_settings_without_a_budget_are_refused(site_toml: pathlib.Path) -> None:
    flags = {"client.server": "s:1", "client.site_key": pathlib.Path("k"), "client.task": "m:t"}
    with pytest.raises(ConfigError, match=r"dp: .*needs this site's budget epsilon.*--dp-epsilon"):
        load_site(None, [], {**flags, "client.data": "d", "dp.delta": 1e-6})
    with pytest.raises(ConfigError, match=r"--dp-epsilon"):
        load_site(site_toml, ["dp={ delta = 1e-6 }"])  # a [dp] table without epsilon


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dp.epsilon=0", "dp.epsilon"),
        ("dp.delta=1", "dp.delta"),
        ("dp.accountant=gdp", "dp.accountant"),
        ("client.log_format=xml", "client.log_format"),
        ("client.seed=many", "client.seed"),
        ("client.insecure=maybe", "client.insecure"),
    ],
)
def test_bad_values_name_the_key_and_the_file(
    site_toml: pathlib.Path, override: str, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_site(site_toml, [override])
    assert f"{key}:" in str(info.value) and str(site_toml) in str(info.value)


def test_unknown_keys_are_refused(site_toml: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'client\.port'"):
        load_site(site_toml, ["client.port=1"])
    path = tmp_path / "typo.toml"
    path.write_text(SITE_TOML.replace("[dp]\n", "[dp]\nepsilonn = 2\n"))
    with pytest.raises(ConfigError, match=r"dp\.epsilonn"):
        load_site(path)


def test_the_heart_disease_example_site_config_loads() -> None:
    example = REPO / "examples" / "heart_disease" / "site.toml"
    site = load_site(
        example,
        [],
        {"client.site_key": pathlib.Path("keys/cleveland.key"), "client.data": "cleveland"},
    )
    assert site.client.task == "examples.heart_disease.task:task"
    assert site.client.insecure is True
    assert site.dp == ClientDPConfig(epsilon=1.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp")
    assert site.ledger_path == pathlib.Path("keys/cleveland.privacy.json")
