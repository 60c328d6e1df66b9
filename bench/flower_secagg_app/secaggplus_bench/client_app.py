"""ClientApp: a NumPyClient behind `secaggplus_mod`, with an optional dropout in front of it.

`drop_mod` comes first in the mod list, so it sees every SecAgg+ message before
`secaggplus_mod` does. It reads the stage from the message's `secaggplus_configs` record (key
`stage`: setup, share_keys, collect_masked_vectors, unmask) and the round from the message's
group id (SecAggPlusWorkflow sets it to the round number). At the chosen node, round and stage it
sleeps past the workflow's timeout: the node never answers in time, as if it had gone away.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import NDArrays, Scalar
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from secaggplus_bench.common import perturb


class BenchClient(NumPyClient):
    def __init__(self, partition_id: int) -> None:
        self.partition_id = partition_id

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        server_round = int(str(config.get("server-round", 0)))
        return perturb(parameters, self.partition_id, server_round), 1, {}


def _partition(context: Context) -> int:
    return int(str(context.node_config.get("partition-id", 0)))


def client_fn(context: Context) -> Client:
    client: Client = BenchClient(_partition(context)).to_client()
    return client


def drop_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Stays silent for `drop-sleep` s at (drop-node, drop-round, drop-stage)."""
    cfg = context.run_config
    if (
        msg.metadata.message_type == MessageType.TRAIN
        and RECORD_KEY_CONFIGS in msg.content.config_records
        and _partition(context) == int(str(cfg["drop-node"]))
        and msg.metadata.group_id == str(cfg["drop-round"])
        and msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE) == cfg["drop-stage"]
    ):
        time.sleep(float(str(cfg["drop-sleep"])))
    return call_next(msg, context)


app = ClientApp(client_fn=client_fn, mods=[drop_mod, secaggplus_mod])
