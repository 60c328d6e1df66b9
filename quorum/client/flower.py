"""A Flower `ClientApp` as a Quorum `SiteTask`: a Flower app joins a federation unchanged.

`quorum client run --task module:task --flower-app module:app` serves the run's fit and
evaluate tasks with the Flower app, called in process as Flower's SuperNode would call it:

- `app` is a `flwr.clientapp.ClientApp`, either with `@app.train()` / `@app.evaluate()`
  handlers (the Message API), or built as `ClientApp(client_fn=client_fn)` around a legacy
  `Client` / `NumPyClient`; a bare `client_fn(context)` is wrapped the same way.
- The task's initial parameters (`--task`, which the server also imports, without Flower) name
  the model's arrays and fix their order: a Message-API app gets them as the ArrayRecord
  "arrays" under those names (a PyTorch app's `to_torch_state_dict()` keys), a legacy app as the
  ordered list of `get_parameters`. A reply must hold the same arrays, by name or in that
  order, with the same shapes.
- The fit config (the run's `site_config`, with Quorum's `round`, `rounds`, `seed`, `run_id`)
  is the message's ConfigRecord "config", plus "server-round" as Flower's strategies send it;
  the run's `site_config` scalars are also the Context's `run_config` (Flower's
  `[tool.flwr.app.config]`). The site's `--data` is the Context's `node_config`, in Flower's
  `--node-config` syntax (`"partition-id=0 num-partitions=2"`). The Context (and its `state`)
  lives as long as the agent, as on a SuperNode.
- A reply's metrics are its MetricRecord's scalars; its example count is the metric
  "num-examples" (Message API) or the `num_examples` a legacy client returns.

Not carried: Flower's server side (ServerApp, strategies, `on_fit_config_fn`), `query`
messages and custom actions, a reply's list-valued metrics, SuperLink-provided node config,
and Flower's secure aggregation mods (Quorum's SecAgg+ applies instead). The app's own mods run
(they are part of the ClientApp).
"""

from __future__ import annotations

import importlib
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from quorum.errors import TaskError
from quorum.task import EvalResult, FitResult, JSONConfig, import_ref
from quorum.wire.blobs import Params

NUM_EXAMPLES = "num-examples"  # the metric Flower's strategies weight by


def load_flower_app(ref: str) -> Any:
    """The `ClientApp` that `module:attribute` names; a bare `client_fn` is wrapped in one."""
    from flwr.clientapp import ClientApp

    app = import_ref(ref)
    if isinstance(app, ClientApp):
        return app
    if callable(app):
        return ClientApp(client_fn=app)
    raise TaskError(f"flower app {ref!r} is neither a flwr ClientApp nor a client_fn(context)")


def _is_legacy(app: Any) -> bool:
    # A ClientApp built around a client_fn answers in Flower's legacy record layout
    # ("fitins.parameters", ...); one with @app.train() handlers in the Message API's.
    return getattr(app, "_call", None) is not None


def _recorddict_compat() -> Any:
    """Flower's conversions between its legacy messages (FitIns, ...) and records: in
    `flwr.compat` in recent releases, in `flwr.common` in older ones (1.21)."""
    try:
        return importlib.import_module("flwr.compat.common.recorddict_compat")
    except ImportError:
        return importlib.import_module("flwr.common.recorddict_compat")


def flower_config(config: JSONConfig) -> dict[str, Any]:
    """The entries of a Quorum config that a Flower ConfigRecord can hold (scalars, and lists
    of one scalar type), plus "server-round"."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, bool | int | float | str | bytes):
            out[key] = value
        elif isinstance(value, list) and value and len({type(v) for v in value}) == 1:
            if isinstance(value[0], bool | int | float | str | bytes):
                out[key] = value
    if "round" in config:
        out["server-round"] = int(config["round"])
    return out


class FlowerSite:
    """`SiteTask` that answers each fit and evaluate task with a Flower `ClientApp`."""

    def __init__(self, app: Any, initial: Params, node_config: str) -> None:
        from flwr.app import Context, RecordDict
        from flwr.common.config import parse_config_args

        self.app = app
        # One message at a time, as a SuperNode runs its ClientApp: the Context is shared.
        self.lock = threading.Lock()
        self.legacy = _is_legacy(app)
        self.shapes = {name: value.shape for name, value in initial.items()}
        self.context = Context(
            run_id=0,
            node_id=zlib.crc32(node_config.encode()),
            node_config=parse_config_args([node_config]) if "=" in node_config else {},
            state=RecordDict(),
            run_config={},
        )

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        if self.legacy:
            from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

            compat = _recorddict_compat()
            ins = FitIns(ndarrays_to_parameters(self._ordered(params)), flower_config(config))
            reply = self._call("train", compat.fitins_to_recorddict(ins, keep_input=False), config)
            res = compat.recorddict_to_fitres(reply, keep_input=False)
            self._check_status(res.status)
            arrays = self._named(dict(enumerate(parameters_to_ndarrays(res.parameters))))
            return FitResult(arrays, int(res.num_examples), _scalars(res.metrics))
        content = self._message_content(params, config)
        reply = self._call("train", content, config)
        records = list(reply.array_records.values())
        if len(records) != 1:
            raise TaskError(
                f"the flower app's train reply holds {len(records)} ArrayRecords, not 1"
            )
        names = list(records[0].keys())
        arrays = self._named(dict(zip(names, records[0].to_numpy_ndarrays(), strict=True)))
        num_examples, metrics = _metric_reply(reply)
        return FitResult(arrays, num_examples, metrics)

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        if self.legacy:
            from flwr.common import EvaluateIns, ndarrays_to_parameters

            compat = _recorddict_compat()
            ins = EvaluateIns(ndarrays_to_parameters(self._ordered(params)), flower_config(config))
            content = compat.evaluateins_to_recorddict(ins, keep_input=False)
            res = compat.recorddict_to_evaluateres(self._call("evaluate", content, config))
            self._check_status(res.status)
            return EvalResult(
                int(res.num_examples), {"loss": float(res.loss), **_scalars(res.metrics)}
            )
        num_examples, metrics = _metric_reply(
            self._call("evaluate", self._message_content(params, config), config)
        )
        return EvalResult(num_examples, metrics)

    def _ordered(self, params: Params) -> list[np.ndarray]:
        return [params[name] for name in self.shapes]

    def _message_content(self, params: Params, config: JSONConfig) -> Any:
        from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

        arrays = ArrayRecord()
        for name in self.shapes:
            arrays[name] = Array.from_numpy_ndarray(params[name])
        return RecordDict({"arrays": arrays, "config": ConfigRecord(flower_config(config))})

    def _call(self, kind: str, content: Any, config: JSONConfig) -> Any:
        """Sends `content` to the app as a `kind` message; its reply's RecordDict."""
        with self.lock:
            return self._call_locked(kind, content, config)

    def _call_locked(self, kind: str, content: Any, config: JSONConfig) -> Any:
        from flwr.app import Message
        from flwr.common import DEFAULT_TTL, Metadata

        self.context.run_config = {
            k: v for k, v in flower_config(config).items() if not isinstance(v, list)
        }
        # Full metadata, as a SuperNode receives it: a message built without it would need
        # a Flower run's task identity.
        metadata = Metadata(
            run_id=self.context.run_id,
            message_id=uuid.uuid4().hex,
            src_node_id=0,
            dst_node_id=self.context.node_id,
            reply_to_message_id="",
            group_id=str(config.get("round", "")),
            created_at=time.time(),
            ttl=DEFAULT_TTL,
            message_type=kind,
        )
        # flwr's overloads leave out this form, which its SuperNode uses.
        message = Message(metadata=metadata, content=content)  # type: ignore[call-overload]
        reply = self.app(message, self.context)
        if reply.has_error():
            raise TaskError(f"the flower app answered {kind} with an error: {reply.error.reason}")
        return reply.content

    def _named(self, arrays: Mapping[str | int, np.ndarray]) -> Params:
        """The reply's arrays under the task's names: by name where the reply uses them,
        else in the task's order; refused unless their number and shapes match."""
        if len(arrays) != len(self.shapes):
            raise TaskError(
                f"the flower app returned {len(arrays)} arrays; the model has {len(self.shapes)} "
                f"({', '.join(self.shapes)})"
            )
        values = (
            [arrays[name] for name in self.shapes]
            if set(arrays) == set(self.shapes)
            else list(arrays.values())
        )
        out: Params = {}
        for (name, shape), value in zip(self.shapes.items(), values, strict=True):
            if value.shape != shape:
                raise TaskError(
                    f"the flower app returned an array of shape {value.shape} for {name!r}, "
                    f"which has shape {shape}"
                )
            out[name] = value
        return out

    @staticmethod
    def _check_status(status: Any) -> None:
        from flwr.common import Code

        if status.code != Code.OK:
            raise TaskError(f"the flower client answered {status.code.name}: {status.message}")


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _metric_reply(reply: Any) -> tuple[int, dict[str, float]]:
    """(num-examples, the other scalar metrics) of a Message-API reply's MetricRecords."""
    metrics: dict[str, float] = {}
    for record in reply.metric_records.values():
        metrics.update(_scalars(record))
    if NUM_EXAMPLES not in metrics:
        raise TaskError(
            f"the flower app's reply has no {NUM_EXAMPLES!r} metric (Flower's strategies weight "
            "by it, and so does Quorum)"
        )
    return int(metrics.pop(NUM_EXAMPLES)), metrics


class FlowerModel:
    """The run's `FederatedTask` for a federation of Flower apps: the initial model (named
    arrays, in the order a legacy app's list has them) from `initial(seed)`, importable by the
    server without Flower. Its sites run with `--flower-app`; a site without one is refused."""

    def __init__(self, initial: Callable[[int], Params]) -> None:
        self.initial = initial

    def initial_parameters(self, seed: int) -> Params:
        return self.initial(seed)

    def site(self, data: str, device: str, seed: int) -> FlowerSite:
        raise TaskError(
            "this task is the model of a Flower app: run its sites with "
            "`quorum client run --flower-app module:app`"
        )
