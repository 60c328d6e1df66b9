"""Model, data and training loops shared by the two Flower apps, as a Flower project's
`task.py` holds them (Flower's quickstart-pytorch layout), on the heart-disease hospitals: the
node config's `partition-id` picks one of `quorum.data.heart_disease.SITES`."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from quorum.data.heart_disease import NUM_FEATURES, SITES, load_site


class Net(nn.Module):
    """Logistic regression on the 13 heart-disease features."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(NUM_FEATURES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out


def load_data(partition_id: int, num_partitions: int) -> tuple[DataLoader, DataLoader]:
    split = load_site(SITES[partition_id % len(SITES)])
    generator = torch.Generator().manual_seed(partition_id)

    def dataset(x: object, y: object) -> TensorDataset:
        return TensorDataset(torch.as_tensor(x), torch.as_tensor(y).reshape(-1, 1))

    return (
        DataLoader(
            dataset(split.x_train, split.y_train), batch_size=8, shuffle=True, generator=generator
        ),
        DataLoader(dataset(split.x_test, split.y_test), batch_size=256),
    )


def train(net: Net, loader: DataLoader, epochs: int, lr: float) -> float:
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    criterion = nn.BCEWithLogitsLoss()
    net.train()
    total = 0.0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
    return total / (epochs * len(loader))


def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    """(mean loss, accuracy)."""
    criterion = nn.BCEWithLogitsLoss(reduction="sum")
    net.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = net(x)
            loss += float(criterion(logits, y))
            correct += int(((logits > 0).float() == y).sum())
            n += len(y)
    return loss / n, correct / n
