"""ClientApp: the node's MNIST site trains the global model, exactly as a `quorum sim` site of
examples/mnist/sim.toml does (TorchTask.fit with the same fit config)."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mnist_bench.sites import site

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    config = msg.content.config_records["config"]
    built = site(
        int(str(context.node_config["partition-id"])),
        int(str(cfg["num-nodes"])),
        int(str(cfg["seed"])),
        int(str(cfg["partition-seed"])),
        float(str(cfg["alpha"])),
    )
    params = {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
    # Quorum's server sends the run's site_config plus the round and the run's seed, from which
    # TorchTask.fit seeds the round's shuffle.
    fitted = built.fit(
        params,
        {
            "local_epochs": int(str(config["local-epochs"])),
            "batch_size": int(str(config["batch-size"])),
            "lr": float(str(config["lr"])),
            "round": int(str(config["server-round"])),
            "seed": int(str(cfg["seed"])),
        },
    )
    metrics: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": fitted.num_examples
    }
    metrics.update(fitted.metrics)
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                array_dict={k: Array.from_numpy_ndarray(v) for k, v in fitted.params.items()}
            ),
            "metrics": MetricRecord(metrics),
        }
    )
    return Message(content=content, reply_to=msg)
