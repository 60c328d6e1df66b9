"""The dashboard in headless Chromium, on real servers and real sites: it signs in, lists the
run, draws the rounds completed so far and gains a point when a round completes, shows refused
uploads, SecAgg dropouts, ε, async staleness and gossip consensus from what the API holds, keeps
Stop from a viewer and lets an operator stop the run."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from quorum.wire import blobs
from tests.e2e.browser import Dashboard, chromium
from tests.e2e.cli import TOKEN, Deployment, heart_disease_sim, quorum, run_settings
from tests.e2e.test_async_runs import _async
from tests.e2e.test_gossip_runs import gossip_settings
from tests.e2e.test_secagg_sim import _vector_sim


def _url(d: Deployment) -> str:
    return f"http://127.0.0.1:{d.admin_port}"


# A server without the stream route, as the page sees it: its fetch of the stream answers 404.
NO_STREAM = """
const realFetch = window.fetch;
window.fetch = (url, options) => String(url).includes("/api/v1/events/stream")
  ? Promise.resolve(new Response("", { status: 404 }))
  : realFetch(url, options);
"""


@pytest.mark.parametrize("feed", ["stream", "polling"])
def test_dashboard_follows_and_stops_a_run(deployment: Deployment, feed: str) -> None:
    """`feed`: how the page follows the events: the server-sent stream, or polling
    /api/v1/events where the server has no stream."""
    d = deployment
    # Fits of round 3 wait on `first`, those of round 4 on `second`: the test decides when
    # each round can complete, however slow the machine.
    first, second = d.root / "hold-3", d.root / "hold-4"
    first.touch()
    second.touch()
    d.run = None
    d.start_server()
    d.start_site("a", f"acc=0.6,n=10,hold={first},hold_from=3")
    d.start_site("b", f"acc=0.8,n=10,hold={second},hold_from=4")
    mallory = d.join_hostile("mallory")  # in round 1's cohort, with an upload holding a NaN
    d.wait_connected({"a", "b", "mallory"})
    admin = d.admin()
    try:
        viewer = admin.post("/api/v1/tokens", {"name": "watch", "role": "viewer"})["token"]
        operator = admin.post("/api/v1/tokens", {"name": "ops", "role": "operator"})["token"]
    finally:
        admin.close()
    run = d.submit(run_settings(rounds=8, round_timeout_s=120.0, evaluate_timeout_s=60.0))
    try:
        offer = mallory.next_fit()
        params = blobs.decode(mallory.download(offer.model_digest))
        poisoned = blobs.encode({k: np.full_like(v, np.nan) for k, v in params.items()})
        assert mallory.upload(offer, poisoned).code == "non_finite"
    finally:
        mallory.close()
    d.wait(lambda: (r := d.run_record()) and r["rounds_completed"] == 2, 90, "round 2")

    with chromium(d.root / "chromium") as driver:
        page = Dashboard(driver, _url(d))
        if feed == "polling":
            page.before_each_page(NO_STREAM)
        assert page.sign_in(viewer) == "viewer"
        page.select_run(run["id"])
        page.until(lambda: page.chart("accuracy")[0] == [1, 2], "rounds 1 and 2 on the chart")
        assert page.chart("accuracy")[1] == ["federated"]
        assert page.run_status() == "running"
        assert page.participation(1) == {"a": "accepted", "b": "accepted", "mallory": "rejected"}
        [refused] = page.rows("refused")
        assert refused[:3] == ["1", "mallory", "non_finite"]
        stop = page.by_id("stop")
        assert stop.is_displayed() and not stop.is_enabled()  # a viewer cannot press it
        page.until(lambda: page.by_id("live").get_attribute("data-state") == feed, feed)

        first.unlink()  # round 3 completes; round 4 waits on `second`
        page.until(lambda: page.chart("accuracy")[0] == [1, 2, 3], "round 3 on the chart")
        page.until(
            lambda: any(
                "round_completed" in e and "round=3 " in e for e in page.texts("#events li")
            ),
            "round 3's event in the list",
        )
        assert d.run_record()["rounds_completed"] == 3  # type: ignore[index]
        page.until(lambda: page.participation(3).get("a") == "accepted", "round 3's participation")
        assert page.participation(3) == {"a": "accepted", "b": "accepted", "mallory": "absent"}

        page.sign_out()
        assert page.sign_in(operator) == "operator"
        page.select_run(run["id"])
        stop = page.by_id("stop")
        page.until(stop.is_enabled, "Stop enabled for an operator")
        stop.click()
        driver.switch_to.alert.accept()
        page.until(lambda: "stop requested" in page.by_id("stop-note").text, "the stop request")
        second.unlink()  # round 4 completes; the run stops before round 5
        page.until(lambda: page.run_status() == "stopped", "the run stopped")
        assert not page.by_id("stop").is_displayed()

    stopped = d.run_record()
    assert stopped and stopped["status"] == "stopped" and stopped["rounds_completed"] == 4


@pytest.mark.slow
def test_dashboard_shows_secagg_dropouts_and_central_epsilon(tmp_path: pathlib.Path) -> None:
    """A simulation whose site c is killed in round 2's masked-input stage, with distributed
    DP; then a server on the simulation's state, as an operator would look at it afterwards."""
    done = quorum(
        "sim",
        "--config",
        str(_vector_sim(tmp_path)),
        "--kill-site",
        "c@2:masked-input",
        *("--set", "run.central_dp.enabled=true", "--set", "run.secagg.clip_range=10"),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    d = Deployment(tmp_path / "out" / "work", None)
    try:
        d.start_server()
        run = d.run_record()
        assert run
        with chromium(tmp_path / "chromium") as driver:
            page = Dashboard(driver, _url(d))
            page.sign_in(TOKEN)
            page.select_run(run["id"])
            page.until(lambda: page.by_id("panel-secagg").is_displayed(), "the SecAgg panel")
            stages = page.texts("#secagg thead th")
            assert stages[0] == "round" and "masked-input" in stages
            [row] = page.rows("secagg")  # only round 2 lost a site
            assert row[0] == "2" and row[stages.index("masked-input")] == "1 of 4"
            assert page.by_id("panel-privacy").is_displayed()
            assert page.chart("privacy") == ([1, 2, 3], ["central ε (distributed)"])
            assert not page.by_id("panel-staleness").is_displayed()
    finally:
        d.stop()


@pytest.mark.slow
def test_dashboard_draws_the_baseline_and_each_sites_budget(tmp_path: pathlib.Path) -> None:
    """The heart-disease simulation (2 rounds), its hospitals under DP-SGD with ε = 3 each, with
    its pooled baseline job (1 epoch); then a server on its state: the baseline is drawn with
    the federated accuracy and loss, each site's ε with the budget."""
    out = tmp_path / "out"
    settings = ("run.rounds=2", "sim.baseline.epochs=1", "site.dp.epsilon=3")
    heart_disease_sim(out, *[x for s in settings for x in ("--set", s)], baselines=True)
    d = Deployment(out / "work", None)
    try:
        d.start_server()
        run = d.run_record()
        assert run
        [job] = d.get(f"/api/v1/runs/{run['id']}")["baselines"]
        assert job["status"] == "completed" and "eval_accuracy" in job["metrics"]
        baseline = f"baseline ddp {job['id'].removeprefix('baseline-')[:6]}"
        with chromium(tmp_path / "chromium") as driver:
            page = Dashboard(driver, _url(d))
            page.sign_in(TOKEN)
            page.select_run(run["id"])
            page.until(lambda: page.chart("accuracy")[0] == [1, 2], "the accuracy chart")
            assert page.chart("accuracy")[1] == ["federated", baseline]
            assert page.chart("loss")[1] == ["federated (evaluate)", "training (fit)", baseline]
            sites = ["cleveland", "hungarian", "switzerland", "va"]
            assert page.chart("privacy") == (
                [1, 2],
                [f"{s} ε" for s in sites] + ["budget (each site)"],
            )
    finally:
        d.stop()


@pytest.mark.slow
def test_dashboard_shows_gossip_consensus_and_async_staleness(deployment: Deployment) -> None:
    d = deployment
    d.run = None
    d.start_server()
    for name in "abcd":
        d.start_site(name, "delta=0.5,n=10,acc=0.7,sleep=0.1")
    d.wait_connected(set("abcd"))
    gossip = d.submit(gossip_settings(name="gossip", rounds=2))
    fedbuff = d.submit(_async(name="fedbuff", rounds=3))
    d.wait(lambda: {r["status"] for r in d.get("/api/v1/runs")} == {"completed"}, 120, "both runs")
    with chromium(d.root / "chromium") as driver:
        page = Dashboard(driver, _url(d))
        page.sign_in(TOKEN)
        page.select_run(gossip["id"])
        page.until(lambda: page.chart("consensus")[0] == [1, 2], "the consensus chart")
        assert page.chart("consensus")[1][0] == "to neighbours"
        assert not page.by_id("panel-staleness").is_displayed()
        page.select_run(fedbuff["id"])
        page.until(lambda: page.chart("staleness")[0] == [1, 2, 3], "the staleness chart")
        assert page.chart("staleness")[1] == ["mean", "max"]
        assert not page.by_id("panel-consensus").is_displayed()


def test_dashboard_refuses_a_wrong_token(deployment: Deployment) -> None:
    deployment.run = None
    deployment.start_server()
    with chromium(deployment.root / "chromium") as driver:
        page = Dashboard(driver, _url(deployment))
        driver.get(f"{page.admin_url}/dashboard")
        page.until(lambda: page.by_id("token").is_displayed(), "the sign-in form")
        page.by_id("token").send_keys("not-a-token\n")
        page.until(lambda: page.by_id("sign-in-error").text, "the refusal")
        assert "does not accept this token" in page.by_id("sign-in-error").text
        assert not page.by_id("main").is_displayed()
