"""A legacy Flower app: a `NumPyClient` behind `client_fn`, as Flower's documentation writes it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.clientapp import ClientApp

from tests.flower_apps.task import Net, load_data, test, train


def get_weights(net: Net) -> list[np.ndarray]:
    return [val.cpu().numpy() for _, val in net.state_dict().items()]


def set_weights(net: Net, parameters: list[np.ndarray]) -> None:
    keys = net.state_dict().keys()
    net.load_state_dict({k: torch.tensor(v) for k, v in zip(keys, parameters, strict=True)})


class FlowerClient(NumPyClient):
    def __init__(self, net: Net, trainloader: Any, valloader: Any) -> None:
        self.net = net
        self.trainloader = trainloader
        self.valloader = valloader

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        set_weights(self.net, parameters)
        train_loss = train(
            self.net, self.trainloader, int(config["local-epochs"]), float(config["lr"])
        )
        return get_weights(self.net), len(self.trainloader.dataset), {"train_loss": train_loss}

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.valloader)
        return loss, len(self.valloader.dataset), {"accuracy": accuracy}


def client_fn(context: Context) -> Client:
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    trainloader, valloader = load_data(partition_id, num_partitions)
    return FlowerClient(Net(), trainloader, valloader).to_client()


app = ClientApp(client_fn=client_fn)
