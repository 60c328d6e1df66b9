"""The Prometheus collector over a real store: each family carries what the store recorded, and
the totals are the same when read by a collector over the reopened store (a restarted server)."""

from __future__ import annotations

import pathlib

from prometheus_client.parser import text_string_to_metric_families

from quorum.admin.metrics import Live, render
from quorum.config import RunConfig
from quorum.server.store import Store

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(store: Store, connected: int = 0) -> Samples:
    text = render(store, Live(connected, 0)).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def _fill(store: Store) -> str:
    run = store.create_run(RunConfig(name="r", task="tests.vector_task:task")).id
    store.set_run_status(run, "running")
    for round_no, (site, eps) in enumerate([("a", 0.5), ("a", 0.9)], start=1):
        attempt = store.start_round(run, round_no)
        task = f"t{round_no}"
        store.offer(task, run, round_no, attempt, site, "fit", bytes_out=100)
        store.finish_participation(
            task, "accepted", metrics={"dp_epsilon": eps}, duration_s=0.3, bytes_in=40
        )
        store.apply_update(task, round_no, attempt, staleness=round_no - 1)
        store.record_metrics(run, round_no, attempt, "central_dp", {"epsilon": round_no * 1.5})
        store.set_round_secagg(
            run,
            round_no,
            attempt,
            {
                "stages": [
                    {"stage": "share-keys", "duration_s": 0.02, "dropped": []},
                    {"stage": "unmask", "duration_s": 0.2, "dropped": [{"site": "b"}]},
                ]
            },
        )
        store.complete_round(run, round_no, attempt, "digest", {})
    attempt = store.start_round(run, 3)
    store.abort_round(run, 3, attempt, "too few sites")
    store.reject("bad_shape", "wrong shape", run_id=run, site="b")
    store.reject("bad_shape", "wrong shape", run_id=run, site="b")
    store.reject("stale_task", "late")
    store.create_baseline("tests.vector_task:task", {})
    return run


def test_every_family_carries_what_the_store_recorded(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path / "quorum.db")
    run = _fill(store)
    samples = _scrape(store, connected=2)
    assert _value(samples, "quorum_connected_sites") == 2
    assert _value(samples, "quorum_run_info", run_id=run, name="r", status="running") == 1
    assert _value(samples, "quorum_rounds_completed_total", run_id=run) == 2
    assert _value(samples, "quorum_rounds_aborted_total", run_id=run) == 1
    assert _value(samples, "quorum_round_duration_seconds_count", run_id=run, status="completed")
    assert _value(samples, "quorum_sent_bytes_total", run_id=run) == 200
    assert _value(samples, "quorum_received_bytes_total", run_id=run) == 80
    assert _value(samples, "quorum_uploads_refused_total", reason="bad_shape") == 2
    assert _value(samples, "quorum_uploads_refused_total", reason="stale_task") == 1
    assert _value(samples, "quorum_secagg_dropouts_total", stage="unmask") == 2
    assert _value(samples, "quorum_secagg_dropouts_total", stage="share-keys") == 0
    assert _value(samples, "quorum_secagg_stage_duration_seconds_count", stage="unmask") == 2
    assert (
        _value(samples, "quorum_secagg_stage_duration_seconds_bucket", stage="unmask", le="0.1")
        == 0
    )
    assert (
        _value(samples, "quorum_secagg_stage_duration_seconds_bucket", stage="unmask", le="0.25")
        == 2
    )
    assert _value(samples, "quorum_site_task_duration_seconds_count", kind="fit") == 2
    # staleness 0 and 1, one update each
    assert _value(samples, "quorum_async_staleness_bucket", run_id=run, le="0.0") == 1
    assert _value(samples, "quorum_async_staleness_bucket", run_id=run, le="+Inf") == 2
    assert _value(samples, "quorum_async_staleness_sum", run_id=run) == 1
    assert _value(samples, "quorum_site_epsilon", run_id=run, site="a") == 0.9  # the latest
    assert _value(samples, "quorum_central_epsilon", run_id=run) == 3.0
    assert _value(samples, "quorum_baseline_jobs", state="queued") == 1
    assert _value(samples, "quorum_baseline_jobs", state="running") == 0
    store.close()

    # A restarted server reads the same totals: no counter starts again at zero.
    reopened = Store(tmp_path / "quorum.db")
    again = _scrape(reopened, connected=0)
    reopened.close()
    counters = {k: v for k, v in samples.items() if k[0].endswith("_total")}
    assert counters and all(again[k] == v for k, v in counters.items())
