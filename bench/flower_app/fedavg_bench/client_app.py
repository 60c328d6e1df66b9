"""ClientApp: returns received parameters + small deterministic perturbation."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedavg_bench.common import perturb

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
    server_round = int(str(msg.content.config_records["config"]["server-round"]))
    pid = int(str(context.node_config.get("partition-id", 0)))
    out = perturb(arrays, pid, server_round)
    content = RecordDict(
        {
            "arrays": ArrayRecord(out),
            "metrics": MetricRecord({"num-examples": 1}),
        }
    )
    return Message(content=content, reply_to=msg)
