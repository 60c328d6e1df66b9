"""deploy/: checked here, where no container engine or cluster runs.

- The Helm chart is rendered and linted by Helm's own engine (helm-python-sdk: Helm's Go SDK in
  a shared library), and every rendered manifest is validated against the Kubernetes schemas
  (kubernetes-validate, offline). The ServiceMonitor (a CRD) is checked against the Service.
- compose.yaml is parsed by a Compose-spec parser (compose-spec), its references checked.
- Every `quorum` command line in these files is parsed by the real command-line app (typer /
  click), and every config file they mount is loaded by the real config models.
- Prometheus' config passes `promtool check config`, the dashboard's PromQL `promtool check
  rules`, and names only metrics the server exports; the systemd units pass
  `systemd-analyze verify`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from typing import Any

import click
import helm_python as helm
import kubernetes_validate
import pytest
import typer.main
import yaml
from compose_spec import PyCompose
from dockerfile_parse import DockerfileParser

from quorum.admin import metrics
from quorum.cli import app
from quorum.config import ServerFile, load, load_site
from quorum.operator.client import OperatorFile
from quorum.server.store import Store

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "quorum"
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
PROMTOOL = shutil.which("promtool")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def quorum_command(args: list[str]) -> click.Context:
    """Parses `quorum ARGS` with the real app, as the shell would run it: an unknown
    subcommand or option, a missing required option or a bad choice raises click's error."""
    command: click.Command = typer.main.get_command(app)
    words = list(args)
    while isinstance(command, click.Group):
        assert words, f"`quorum {' '.join(args)}` names no subcommand"
        name = words.pop(0)
        assert name in command.commands, f"`quorum {' '.join(args)}`: no subcommand {name!r}"
        command = command.commands[name]
    ctx = command.make_context("quorum", words)
    # Paths as the command receives them (typer converts them after click's parsing).
    paths = {p.name for p in command.params if isinstance(p.type, click.Path)}
    ctx.params = {
        k: pathlib.Path(v) if k in paths and v is not None else v for k, v in ctx.params.items()
    }
    return ctx


def server_file(text: str, tmp_path: pathlib.Path) -> tuple[ServerFile, pathlib.Path | None]:
    """Loads a server.toml as `quorum server start` does, and returns it with its
    admin_token_file: a mounted secret in the deployment, read from a file here."""
    path = tmp_path / "server.toml"
    path.write_text(text)
    declared = tomllib.loads(text)["server"].get("admin_token_file")
    token = tmp_path / "admin.token"
    token.write_text("a-token\n")
    overrides = [f"server.admin_token_file={token}"] if declared else []
    return load(ServerFile, path, overrides), pathlib.Path(declared) if declared else None


# ---------------------------------------------------------------------------------------------
# Helm


TLS_VALUES = {"tls": {"cert": "CERT", "key": "KEY", "ca": "CA"}}
FULL_VALUES = {
    **TLS_VALUES,
    "serviceMonitor": {"enabled": True, "tokenSecret": {"name": "quorum-prometheus"}},
    "server": {
        "config": {"server_id": "heart-consortium", "max_inflight_uploads": 4},
        "runsToml": (REPO / "examples" / "heart_disease" / "server.toml")
        .read_text()
        .split("[server]")[1]
        .split("\n\n", 1)[1],
    },
    "sites": [
        {"name": "cleveland", "keySecret": "site-cleveland", "data": "cleveland"},
        {
            "name": "va",
            "keySecret": "site-va",
            "data": "/data/va.csv",
            "dpEpsilon": 1.0,
            "device": "cuda",
            "persistence": {"size": "1Gi"},
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "va-data"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
            "extraArgs": ["--seed", "7"],
        },
    ],
}
PLAINTEXT_VALUES = {"tls": {"enabled": False}, "adminToken": {"existingSecret": "my-token"}}
EXISTING_TLS_VALUES = {"tls": {"existingSecret": "quorum-tls-from-certs"}}


def render(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The chart's manifests by template file, as `helm install --dry-run` would make them."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(
            copy.deepcopy(values), name="fl", namespace="hospitals", is_install=True
        )
    return {
        path.rsplit("/", 1)[-1]: [doc for doc in yaml.safe_load_all(text) if doc]
        for path, text in files.items()
        if path.endswith(".yaml")
    }


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for docs in render(values).values() for doc in docs]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


VALUE_SETS = [TLS_VALUES, FULL_VALUES, PLAINTEXT_VALUES, EXISTING_TLS_VALUES]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_passes_strictly(values: dict[str, Any]) -> None:
    result = helm.lint(str(CHART), copy.deepcopy(values), strict=True, namespace="hospitals")
    assert result["errors"] == []
    # Severity 1 is information (such as "icon is recommended"); 2 and above, warnings.
    assert [m for m in result["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", VALUE_SETS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_manifests_validate_against_the_kubernetes_schemas(
    values: dict[str, Any], version: str
) -> None:
    for doc in manifests(values):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked in test_service_monitor_scrapes_the_admin_service
        kubernetes_validate.validate(doc, version, strict=True)


def test_server_statefulset_has_state_volume_probes_and_secrets() -> None:
    docs = manifests(FULL_VALUES)
    server = one(docs, "StatefulSet", "fl-quorum-server")
    spec = server["spec"]
    assert spec["replicas"] == 1
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    main = container(server)
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]]["mountPath"] == "/var/lib/quorum/state"
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"federation": 8600, "admin": 8601}
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = main[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == (path, "admin", "HTTPS")
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert volumes["tls"]["secret"]["secretName"] in secrets
    assert set(secrets[volumes["tls"]["secret"]["secretName"]]["data"]) == {
        "tls.crt",
        "tls.key",
        "ca.crt",
    }
    token_secret = secrets[volumes["admin-token"]["secret"]["secretName"]]
    # Secret files are root's; fsGroup makes them the image's group's, which must read them.
    for volume in ("tls", "admin-token"):
        assert volumes[volume]["secret"]["defaultMode"] & 0o040
    assert token_secret["data"]["token"]
    assert set(mounts) <= set(volumes) | {claim["metadata"]["name"]}
    # Services for both ports select the server's pods.
    labels = spec["template"]["metadata"]["labels"]
    for kind, port in (("federation", 8600), ("admin", 8601)):
        service = one(docs, "Service", f"fl-quorum-{kind}")
        assert service["spec"]["ports"][0]["port"] == port
        assert service["spec"]["ports"][0]["targetPort"] == kind
        assert service["spec"]["selector"].items() <= labels.items()


def test_server_command_and_config_are_what_quorum_takes(tmp_path: pathlib.Path) -> None:
    for values in VALUE_SETS:
        docs = manifests(values)
        main = container(one(docs, "StatefulSet"))
        ctx = quorum_command(main["args"])
        assert ctx.params["insecure"] is not values["tls"].get("enabled", True)
        config_path = pathlib.Path(ctx.params["config"])
        (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == str(config_path)]
        text = one(docs, "ConfigMap")["data"][mount["subPath"]]
        config, token_file = server_file(text, tmp_path)
        mounted = {m["mountPath"] for m in main["volumeMounts"]}
        assert str(config.server.state_dir) in mounted
        assert token_file is not None and str(token_file.parent) in mounted
        if values["tls"].get("enabled", True):
            assert config.server.tls_cert and str(config.server.tls_cert.parent) in mounted
        assert config.server.admin_address.endswith(":8601")
    full, _ = server_file(one(manifests(FULL_VALUES), "ConfigMap")["data"]["server.toml"], tmp_path)
    assert full.server.max_inflight_uploads == 4 and full.server.server_id == "heart-consortium"
    assert [r.name for r in full.runs] == ["heart-disease-fedyogi"]
    assert full.runs[0].rounds == 15 and isinstance(full.runs[0].rounds, int)


def test_each_site_is_a_deployment_running_quorum_client_run() -> None:
    docs = manifests(FULL_VALUES)
    sites = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(sites) == {"fl-quorum-site-cleveland", "fl-quorum-site-va"}
    federation = one(docs, "Service", "fl-quorum-federation")
    tls_secret = one(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    (server_tls,) = [v["secret"]["secretName"] for v in tls_secret if v["name"] == "tls"]
    for site in sites.values():
        assert site["spec"]["replicas"] == 1 and site["spec"]["strategy"]["type"] == "Recreate"
        main = container(site)
        ctx = quorum_command(main["args"])
        params = ctx.params
        assert params["server"] == f"{federation['metadata']['name']}.hospitals.svc:8600"
        volumes = {v["name"]: v for v in site["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        assert set(mounts.values()) <= set(volumes)
        key_volume = volumes[mounts[str(params["site_key"].parent)]]["secret"]
        assert key_volume["items"] == [{"key": "site.key", "path": params["site_key"].name}]
        trust = volumes[mounts[str(params["root_cert"].parent)]]["secret"]
        # A site gets the CA bundle of the TLS secret, never the server's key.
        assert trust["secretName"] == server_tls and [i["key"] for i in trust["items"]] == [
            "ca.crt"
        ]
        assert str(params["cache_dir"]).startswith("/var/lib/quorum/site")
    va = quorum_command(container(sites["fl-quorum-site-va"])["args"]).params
    assert (va["dp_epsilon"], va["device"], va["seed"], va["data"]) == (
        1.0,
        "cuda",
        7,
        "/data/va.csv",
    )
    assert str(va["dp_ledger"]).startswith("/var/lib/quorum/site/")
    claim = one(docs, "PersistentVolumeClaim", "fl-quorum-site-va")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    plaintext = quorum_command(
        container(
            one(manifests({**PLAINTEXT_VALUES, "sites": FULL_VALUES["sites"][:1]}), "Deployment")
        )["args"]
    )
    assert plaintext.params["insecure"] and plaintext.params["root_cert"] is None


def test_service_monitor_scrapes_the_admin_service() -> None:
    docs = manifests(FULL_VALUES)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    admin = one(docs, "Service", "fl-quorum-admin")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= (
        one(docs, "Service", "fl-quorum-federation")["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == admin["spec"]["ports"][0]["name"]
    assert (endpoint["path"], endpoint["scheme"]) == ("/metrics", "https")
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "quorum-prometheus", "key": "token"},
    }
    assert endpoint["tlsConfig"]["serverName"] == "fl-quorum-admin.hospitals.svc"
    assert not [d for d in manifests(TLS_VALUES) if d["kind"] == "ServiceMonitor"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "tls: set tls.existingSecret"),
        ({**TLS_VALUES, "serviceMonitor": {"enabled": True}}, "serviceMonitor.tokenSecret.name"),
        ({**TLS_VALUES, "sites": [{"name": "x", "data": "d"}]}, r"sites\[x\].keySecret"),
    ],
)
def test_missing_values_fail_the_render_with_what_to_set(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# ---------------------------------------------------------------------------------------------
# compose


def compose_file() -> dict[str, Any]:
    """compose.yaml as Compose reads it: variables interpolated with their defaults, YAML merge
    keys resolved."""
    text = (DEPLOY / "compose.yaml").read_text()
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)
    assert "${" not in text, "a variable without a default"
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a named volume, or a path relative to deploy/)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def setup_script_commands(step: str) -> Iterator[list[str]]:
    """The `quorum ...` command lines of one step of deploy/compose/setup.sh, its variables
    filled in as the script sets them."""
    script = (DEPLOY / "compose" / "setup.sh").read_text()
    body = script.split(f"\n{step}() {{\n", 1)[1].split("\n}\n", 1)[0]
    joined = body.replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("quorum "):
            words = shlex.split(line.split("|")[0].replace("$Q", "/var/lib/quorum"))
            yield [w.replace("$site", "cleveland") for w in words[1:]]


def test_compose_file_follows_the_compose_spec() -> None:
    data = compose_file()
    PyCompose.from_json(json.dumps(data))  # raises ValueError naming the key and line
    services, volumes = data["services"], data["volumes"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}"
        for source in mounts(service).values():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
    assert {n for n in services if n.startswith("site-")} == {
        "site-cleveland",
        "site-hungarian",
        "site-switzerland",
        "site-va",
    }


def test_compose_commands_are_quorum_commands(tmp_path: pathlib.Path) -> None:
    data = compose_file()
    services = data["services"]
    server = quorum_command(services["server"]["command"])
    config_source = mounts(services["server"])[str(server.params["config"])]
    config, token_file = server_file((DEPLOY / config_source).read_text(), tmp_path)
    server_mounts = mounts(services["server"])
    for path in (config.server.tls_cert, config.server.tls_key, token_file):
        assert path is not None and str(path.parent) in server_mounts
    assert server_mounts[str(config.server.state_dir)] == "state"
    assert [r.min_available_sites for r in config.runs] == [4]
    federation_port = config.server.federation_address.rsplit(":", 1)[1]
    for name in ("cleveland", "hungarian", "switzerland", "va"):
        site = services[f"site-{name}"]
        params = quorum_command(site["command"]).params
        assert params["server"] == f"server:{federation_port}"
        assert params["site_key"] == pathlib.Path(f"/var/lib/quorum/keys/{name}.key")
        assert params["data"] == name
        site_mounts = mounts(site)
        assert site_mounts[str(params["root_cert"].parent)] == "trust"
        assert site_mounts[str(params["site_key"].parent)] == "keys"
    script = DEPLOY / "compose" / "setup.sh"
    syntax = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    init = list(setup_script_commands("init"))
    enrol = list(setup_script_commands("enrol"))
    assert [c[:2] for c in init] == [["certs", "init"], ["certs", "issue"], ["site", "keygen"]]
    assert [c[:2] for c in enrol] == [["sites", "add"], ["tokens", "create"]]
    for command in init + enrol:
        quorum_command(command)
    issue = quorum_command(init[1]).params
    assert "server" in issue["san"]  # the name sites and Prometheus dial
    assert mounts(services["server"])[str(config.server.tls_cert.parent)] == "tls"
    assert pathlib.Path(issue["out"]) == config.server.tls_cert.parent
    created = quorum_command(enrol[1]).params
    assert created["role"] == "viewer"
    operator = services["enrol"]["environment"]["QUORUM_OPERATOR_CONFIG"]
    operator_file = load(OperatorFile, DEPLOY / mounts(services["enrol"])[operator])
    assert operator_file.url == "https://server:8601"
    assert operator_file.token_file == token_file


def test_compose_healthcheck_probes_readyz_over_tls() -> None:
    check = compose_file()["services"]["server"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    assert "https://localhost:8601/readyz" in check[3] and "cafile=" in check[3]
    compile(check[3], "healthcheck", "exec")


# ---------------------------------------------------------------------------------------------
# Prometheus and Grafana


def exported_metric_names(tmp_path: pathlib.Path) -> set[str]:
    """The sample names the server's /metrics can carry, from its exposition's TYPE lines
    (counters with _total, histograms with _bucket, _sum and _count)."""
    store = Store(tmp_path / "quorum.db")
    try:
        live = metrics.Live(**{f.name: 0 for f in dataclasses.fields(metrics.Live)})
        text = metrics.render(store, live).decode()
    finally:
        store.close()
    suffixes = {"histogram": ["_bucket", "_sum", "_count"]}
    families = re.findall(r"^# TYPE (\w+) (\w+)$", text, re.MULTILINE)
    assert families
    names = {n + s for n, kind in families for s in suffixes.get(kind, [""])}
    # A counter's TYPE line may or may not carry the _total its samples have.
    return names | {f"{n}_total" for n, kind in families if kind == "counter"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "quorum.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in as Grafana does."""
    return expr.replace("$__rate_interval", "1m").replace("$run_id", ".*")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed")
def test_prometheus_config_passes_promtool(tmp_path: pathlib.Path) -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert (job["scheme"], job["metrics_path"]) == ("https", "/metrics")
    assert job["static_configs"][0]["targets"] == ["server:8601"]
    prometheus = compose_file()["services"]["prometheus"]
    prom_mounts = mounts(prometheus)
    credentials = pathlib.Path(job["authorization"]["credentials_file"])
    ca = pathlib.Path(job["tls_config"]["ca_file"])
    assert prom_mounts[str(credentials.parent)] == "prometheus-token"
    assert prom_mounts[str(ca.parent)] == "trust"
    # promtool checks the files it names exist: the same config with them here.
    (tmp_path / credentials.name).write_text("token\n")
    (tmp_path / ca.name).write_text("")
    job["authorization"]["credentials_file"] = str(tmp_path / credentials.name)
    job["tls_config"]["ca_file"] = str(tmp_path / ca.name)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed")
def test_dashboard_queries_parse_and_name_exported_metrics(tmp_path: pathlib.Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 12
    known = exported_metric_names(tmp_path)
    for expr in exprs:
        names = set(re.findall(r"\bquorum_\w+", expr))
        assert names and names <= known, f"{expr}: {names - known}"
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"quorum:panel_{i}", "expr": as_promql(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    provisioning = DEPLOY / "compose" / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "quorum.yaml").read_text())[
        "providers"
    ]
    grafana = compose_file()["services"]["grafana"]
    grafana_mounts = mounts(grafana)
    dashboard_files = [t for t in grafana_mounts if t.startswith(provider["options"]["path"] + "/")]
    assert [grafana_mounts[t] for t in dashboard_files] == ["./grafana/quorum.json"]
    assert grafana_mounts["/etc/grafana/provisioning"] == "./compose/grafana/provisioning"
    dashboard = json.loads((DEPLOY / "grafana" / "quorum.json").read_text())
    sources = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert sources == {datasource["uid"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------------------------
# The image


def test_dockerfile_is_multi_stage_non_root_and_runs_quorum() -> None:
    dockerfile = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    steps = [(i["instruction"], i["value"]) for i in dockerfile.structure]
    froms = [v for k, v in steps if k == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    args = dict(v.split("=", 1) for k, v in steps if k == "ARG" and "=" in v)
    assert args["TORCH_VARIANT"] == "cpu" and "${TORCH_VARIANT}" in args["TORCH_INDEX"]
    runs = [v for k, v in steps if k == "RUN"]
    assert any('--index-url "${TORCH_INDEX}" torch' in r for r in runs)
    final = steps[[k for k, _ in steps].index("FROM", steps.index(("FROM", froms[0])) + 1) :]
    (user,) = [v for k, v in final if k == "USER"]
    assert not user.startswith(("0", "root"))
    assert [json.loads(v) for k, v in final if k == "ENTRYPOINT"] == [["quorum"]]
    copied = [v.split()[0] for k, v in steps if k == "COPY" and not v.startswith("--from")]
    copied += [
        w for k, v in steps if k == "COPY" and not v.startswith("--from") for w in v.split()[1:-1]
    ]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for source in copied:
        assert (REPO / source).exists(), source
        assert f"!{source.rstrip('/')}" in {line.rstrip("/") for line in ignore}, source
    # The image's user is the one the chart and compose make volumes writable for.
    useradd = next(r for r in runs if "useradd" in r)
    assert "--uid 10001" in useradd and user == "10001:10001"
    pod = one(manifests(TLS_VALUES), "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert "chown -R 10001:10001" in (DEPLOY / "compose" / "setup.sh").read_text()


# ---------------------------------------------------------------------------------------------
# systemd


def unit_exec_start(unit: pathlib.Path) -> list[str]:
    (line,) = [x for x in unit.read_text().splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_units_run_quorum_with_their_configs(tmp_path: pathlib.Path) -> None:
    systemd = DEPLOY / "systemd"
    server = quorum_command(unit_exec_start(systemd / "quorum-server.service")[1:])
    assert server.params["insecure"] is False
    config, token_file = server_file(
        (systemd / pathlib.Path(server.params["config"]).name).read_text(), tmp_path
    )
    credentials = "/run/credentials/quorum-server.service"
    assert str(token_file) == f"{credentials}/admin.token"
    text = (systemd / "quorum-server.service").read_text()
    assert str(config.server.tls_key) == f"{credentials}/server.key"
    assert "LoadCredential=server.key:" in text and "LoadCredential=admin.token:" in text
    assert str(config.server.state_dir).startswith("/var/lib/quorum/")
    assert "StateDirectory=quorum\n" in text

    site_args = unit_exec_start(systemd / "quorum-site.service")[1:]
    site_ctx = quorum_command(site_args)
    site = load_site(systemd / pathlib.Path(site_ctx.params["config"]).name)
    assert str(site.client.site_key) == "/run/credentials/quorum-site.service/site.key"
    assert "LoadCredential=site.key:" in (systemd / "quorum-site.service").read_text()
    # What the agent writes lives in its state directory (the key's folder is read-only).
    assert str(site.client.cache_dir).startswith("/var/lib/quorum-site/")
    assert str(site.ledger_path).startswith("/var/lib/quorum-site/")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["quorum-server.service", "quorum-site.service"])
def test_systemd_units_verify(unit: str, tmp_path: pathlib.Path) -> None:
    # The unit as installed, its quorum the one of this environment (verify checks that the
    # command exists and is executable).
    quorum = pathlib.Path(sys.executable).with_name("quorum")
    text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/quorum/bin/quorum", str(quorum))
    (tmp_path / unit).write_text(text)
    assert SYSTEMD_ANALYZE is not None
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(tmp_path / unit)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert unit not in done.stderr, done.stderr
