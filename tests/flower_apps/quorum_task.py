"""The run's task for both Flower apps: the initial model, which the server imports without
Flower (a Flower project's ServerApp would build it the same way)."""

from __future__ import annotations

import torch

from quorum.client.flower import FlowerModel
from quorum.wire.blobs import Params
from tests.flower_apps.task import Net


def initial(seed: int) -> Params:
    torch.manual_seed(seed)
    return {name: value.numpy() for name, value in Net().state_dict().items()}


task = FlowerModel(initial)
