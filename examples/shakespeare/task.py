"""The character-level GPT on Tiny Shakespeare, federated by speaking role.

A run names this task `examples.shakespeare.task:task`. A site's `data` is one of:

- `site-K-of-N` (1 <= K <= N): the K-th of N sites of the speaker split of
  `quorum.data.shakespeare` (the 308 roles dealt to N sites with near-equal training text). The
  site trains on its roles' training speeches and evaluates on their held-out speeches.
- `pooled`: every site's data together, the centralised baseline of a `site-K-of-N` federation
  (whatever N: the role hold-out does not depend on it).
- `nanogpt`: nanoGPT's split (the first 90% of the file trains, the last 10% validates), for
  numbers comparable with nanoGPT's `shakespeare_char`.

Examples are next-character windows: inputs (n, block_size) token ids and targets the same
windows shifted by one, cut every `stride` characters (default `block_size`: each character is a
target once per epoch, 15,735 training windows in `pooled`, about 3,900 per site with 4 sites).
The loss is the cross entropy averaged over tokens (`next_token_loss`); `accuracy` is per token
(argmax of the logits against the next character). Sites train with Adam (a fresh optimiser per
fit, as `TorchTask` does), batch 64 and lr 1e-3 unless the fit config says otherwise; a fit's
default is one epoch of the site's windows.

The text is the copy bundled with the package (`quorum/data/tinyshakespeare/input.txt`); build a
`ShakespeareTask(path=...)` in your own module to read another file.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from quorum.baseline.gpt import GPT, GPTConfig, LinearFactory, next_token_loss
from quorum.baseline.task import evaluate
from quorum.data import shakespeare
from quorum.errors import TaskError
from quorum.torch_task import TorchTask, adam, params_from_module
from quorum.wire.blobs import Params

BATCH_SIZE = 64
LR = 1e-3
EVAL_BATCH_SIZE = 256
"""Windows per evaluation batch: the activations of 256 windows of the default model (its MLP
alone holds 256 x 64 x 512 floats) stay well under a few hundred MB."""

_SITE = re.compile(r"site-([0-9]+)-of-([0-9]+)")


class ShakespeareTask:
    """`FederatedTask` and `CentralisedTask` (`quorum baseline run`) for the GPT on Tiny
    Shakespeare (see the module docstring). Centralised, `data` names the same splits, and the
    model's four block linears come from the engine's `LinearFactory`, so Megatron can split
    them over the ranks."""

    def __init__(
        self,
        config: GPTConfig | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        stride: int | None = None,
        batch_size: int = BATCH_SIZE,
        lr: float = LR,
    ) -> None:
        self.config = GPTConfig() if config is None else config
        self.path = path
        self.stride = stride
        self.batch_size = batch_size
        self.lr = lr

    def initial_parameters(self, seed: int) -> Params:
        return params_from_module(GPT(self.config, seed=seed))

    def texts(self, data: str) -> tuple[str, str, shakespeare.Vocabulary]:
        """The (train, validation) text that `data` names, and the whole file's vocabulary."""
        text = shakespeare.read_text(self.path)
        vocabulary = shakespeare.vocabulary(text)
        if vocabulary.size != self.config.vocab_size:
            raise TaskError(
                f"the text has {vocabulary.size} distinct characters but the model's vocab_size "
                f"is {self.config.vocab_size}"
            )
        if data == "pooled":
            train, validation = shakespeare.pooled_texts(text)
        elif data == "nanogpt":
            train, validation = shakespeare.train_validation(text)
        else:
            match = _SITE.fullmatch(data)
            if match is None:
                raise TaskError(
                    f"unknown Shakespeare data {data!r}: use 'site-K-of-N' (1 <= K <= N), "
                    "'pooled' or 'nanogpt'"
                )
            k, n = int(match[1]), int(match[2])
            if not 1 <= k <= n:
                raise TaskError(f"site {data!r}: K must be between 1 and N")
            site = shakespeare.site_texts(text, n)[k - 1]
            train, validation = site.train, site.validation
        return train, validation, vocabulary

    def site(self, data: str, device: str, seed: int) -> TorchTask:
        train, validation, vocabulary = self.texts(data)
        train_set = self._nonempty(self._windows(train, vocabulary), data, "training")
        test_set = self._nonempty(self._windows(validation, vocabulary), data, "validation")
        return TorchTask(
            GPT(self.config, seed=seed),
            train_set,
            test_set,
            next_token_loss,
            adam,
            device=device,
            batch_size=self.batch_size,
            seed=seed,
            lr=self.lr,
            eval_batch_size=EVAL_BATCH_SIZE,
        )

    @property
    def tokens_per_sample(self) -> int:
        return self.config.block_size

    @property
    def default_batch_size(self) -> int:
        return self.batch_size

    @property
    def default_learning_rate(self) -> float:
        return self.lr

    def build_model(self, seed: int, linears: LinearFactory) -> nn.Module:
        return GPT(self.config, linears, seed=seed)

    def train_dataset(self, data: str) -> TensorDataset:
        train, _, vocabulary = self.texts(data)
        return self._nonempty(self._windows(train, vocabulary), data, "training")

    def eval_dataset(self, data: str) -> TensorDataset:
        _, validation, vocabulary = self.texts(data)
        return self._nonempty(self._windows(validation, vocabulary), data, "validation")

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return next_token_loss(outputs, targets)

    def eval_metrics(
        self,
        model: nn.Module,
        dataset: Dataset[tuple[torch.Tensor, ...]],
        device: torch.device,
    ) -> dict[str, float]:
        """Loss and accuracy per token (argmax of the logits against the next character)."""
        return evaluate(model, dataset, device, next_token_loss, _token_hits, EVAL_BATCH_SIZE)

    def _nonempty(self, dataset: TensorDataset, data: str, name: str) -> TensorDataset:
        if len(dataset) == 0:
            raise TaskError(
                f"Shakespeare data {data!r} has too little {name} text for one window of "
                f"{self.config.block_size + 1} characters; use fewer sites"
            )
        return dataset

    def _windows(self, text: str, vocabulary: shakespeare.Vocabulary) -> TensorDataset:
        inputs, targets = shakespeare.windows(
            vocabulary.encode(text), self.config.block_size, self.stride
        )
        return TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets))


def _token_hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    return int((logits.argmax(dim=-1) == targets).sum()), targets.numel()


task = ShakespeareTask()
