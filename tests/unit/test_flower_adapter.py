"""The Flower adapter's conversions, with the test Flower apps and small hand-made ones."""

from __future__ import annotations

import pathlib
from typing import Any, ClassVar

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from quorum.client.flower import FlowerSite, flower_config, load_flower_app
from quorum.config import load_site
from quorum.errors import TaskError
from tests.flower_apps.quorum_task import task

NODE = "partition-id=0 num-partitions=2"
CONFIG = {"lr": 0.05, "local-epochs": 1, "round": 3, "rounds": 5, "run_id": "r1", "nested": {}}
INITIAL = {"a": np.arange(3, dtype=np.float32), "b": np.ones((2, 2), dtype=np.float32)}


class Recorder(NumPyClient):
    """Records what it was given; answers with `reply(parameters)`."""

    seen: ClassVar[list[tuple[list[np.ndarray], dict[str, Any]]]] = []

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def fit(self, parameters: Any, config: Any) -> Any:
        Recorder.seen.append((parameters, dict(config)))
        return self.reply(parameters), 7, {"m": 1.5, "flag": True}

    def evaluate(self, parameters: Any, config: Any) -> Any:
        return 0.25, 9, {"accuracy": 0.75}


def legacy_site(reply: Any) -> FlowerSite:
    return FlowerSite(ClientApp(client_fn=lambda ctx: Recorder(reply).to_client()), INITIAL, NODE)


def test_flower_config_keeps_scalars_and_adds_server_round() -> None:
    assert flower_config(CONFIG) == {
        "lr": 0.05,
        "local-epochs": 1,
        "round": 3,
        "rounds": 5,
        "run_id": "r1",
        "server-round": 3,
    }


def test_a_legacy_client_gets_the_arrays_in_the_tasks_order() -> None:
    Recorder.seen.clear()
    site = legacy_site(lambda p: [p[0] + 1, p[1] * 2])
    params = {"b": INITIAL["b"], "a": INITIAL["a"]}  # the wire's order is not the task's
    fit = site.fit(params, CONFIG)
    given, config = Recorder.seen[0]
    np.testing.assert_array_equal(given[0], INITIAL["a"])
    np.testing.assert_array_equal(given[1], INITIAL["b"])
    assert config["server-round"] == 3 and config["lr"] == 0.05
    assert list(fit.params) == ["a", "b"]
    np.testing.assert_array_equal(fit.params["a"], INITIAL["a"] + 1)
    np.testing.assert_array_equal(fit.params["b"], INITIAL["b"] * 2)
    assert fit.num_examples == 7
    assert fit.metrics == {"m": 1.5}  # a bool is no metric
    ev = site.evaluate(INITIAL, CONFIG)
    assert (ev.num_examples, ev.metrics) == (9, {"loss": 0.25, "accuracy": 0.75})


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (lambda p: p[:1], "returned 1 arrays; the model has 2 \\(a, b\\)"),
        (lambda p: [p[0], p[0]], "shape \\(3,\\) for 'b', which has shape \\(2, 2\\)"),
    ],
)
def test_a_wrong_reply_is_a_task_error(reply: Any, match: str) -> None:
    with pytest.raises(TaskError, match=match):
        legacy_site(reply).fit(INITIAL, CONFIG)


def message_site(metrics: dict[str, Any], arrays: bool = True) -> FlowerSite:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        assert context.node_config == {"partition-id": 0, "num-partitions": 2}
        assert context.run_config["lr"] == 0.05
        assert msg.content["config"]["server-round"] == 3
        received = msg.content["arrays"]
        assert list(received.keys()) == ["a", "b"]
        # Replied in another order, under the task's names: matched by name.
        out = {"b": Array(received["b"].numpy() + 1), "a": received["a"]}
        content = RecordDict({"metrics": MetricRecord(metrics)})
        if arrays:
            content["arrays"] = ArrayRecord(out)
        return Message(content=content, reply_to=msg)

    return FlowerSite(app, INITIAL, NODE)


def test_a_message_app_reply_becomes_a_fit_result() -> None:
    fit = message_site({"num-examples": 11, "train_loss": 0.5, "hist": [1.0, 2.0]}).fit(
        INITIAL, CONFIG
    )
    np.testing.assert_array_equal(fit.params["b"], INITIAL["b"] + 1)
    np.testing.assert_array_equal(fit.params["a"], INITIAL["a"])
    assert (fit.num_examples, fit.metrics) == (11, {"train_loss": 0.5})


def test_a_message_app_reply_without_num_examples_or_arrays_is_a_task_error() -> None:
    with pytest.raises(TaskError, match="no 'num-examples' metric"):
        message_site({"train_loss": 0.5}).fit(INITIAL, CONFIG)
    with pytest.raises(TaskError, match="holds 0 ArrayRecords"):
        message_site({"num-examples": 1}, arrays=False).fit(INITIAL, CONFIG)


@pytest.mark.parametrize(
    "ref", ["tests.flower_apps.numpy_app:app", "tests.flower_apps.message_app:app"]
)
def test_the_test_apps_train_through_the_adapter(ref: str) -> None:
    initial = task.initial_parameters(0)
    site = FlowerSite(load_flower_app(ref), initial, NODE)
    config = {"lr": 0.05, "local-epochs": 1, "round": 1}
    fit = site.fit(initial, config)
    assert list(fit.params) == list(initial) and fit.num_examples == 199  # cleveland's train
    assert not np.array_equal(fit.params["fc.weight"], initial["fc.weight"])
    ev = site.evaluate(fit.params, config)
    assert ev.num_examples == 104


def test_a_bare_client_fn_is_wrapped_and_anything_else_refused() -> None:
    assert isinstance(load_flower_app("tests.flower_apps.numpy_app:client_fn"), ClientApp)
    with pytest.raises(TaskError, match="neither a flwr ClientApp"):
        load_flower_app("tests.flower_apps.task:NUM_FEATURES")
    with pytest.raises(TaskError, match="--flower-app"):
        task.site("x", "cpu", 0)


def test_a_site_config_names_the_flower_app(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        "[client]\n"
        'server = "127.0.0.1:8600"\n'
        'site_key = "site.key"\n'
        'task = "tests.flower_apps.quorum_task:task"\n'
        'flower_app = "tests.flower_apps.message_app:app"\n'
        f'data = "{NODE}"\n'
    )
    client = load_site(path, [], {"client.flower_app": None}).client
    assert (client.flower_app, client.data) == ("tests.flower_apps.message_app:app", NODE)
    flag = load_site(path, [], {"client.flower_app": "tests.flower_apps.numpy_app:app"})
    assert flag.client.flower_app == "tests.flower_apps.numpy_app:app"
