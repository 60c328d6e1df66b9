"""The character-level GPT on Tiny Shakespeare, federated by speaking role.

A run names this task `examples.shakespeare.task:task`. A site's `data` is one of:

- `site-K-of-N` (1 <= K <= N): the K-th of N sites of the speaker split of
  `quorum.data.shakespeare` (the 308 roles dealt to N sites with near-equal training text). The
  site trains on its roles' training speeches and evaluates on their held-out speeches.
- `pooled`: every site's data together, the centralised baseline of a `site-K-of-N` federation
  (whatever N: the role hold-out does not depend on it).
- `nanogpt`: nanoGPT's split (the first 90% of the file trains, the last 10% validates), for
  numbers comparable with nanoGPT's `shakespeare_char`.

`quorum sim` with `[sim] data = "shakespeare"` and a `[sim.partition]` splits the speeches among
its virtual sites instead (`examples("shakespeare")`, `site_of("shakespeare", indices, ...)`):

- An example is a speech (7,222 in the bundled file), owned by its speaker, so the natural
  partition makes one site per speaking role (308, in order of each role's first speech:
  site-0000 is First Citizen). Its label is the speaker too: the partition's label histogram
  then shows which roles each site holds, and the other kinds split by role (shards: a few roles
  per site, as in McMahan et al.'s Shakespeare; dirichlet: each role's speeches spread over the
  sites with skew).
- A site trains on its speeches on the training side of the role hold-out and evaluates on its
  held-out ones (`texts_of`), each side concatenated in file order. The hold-out is decided per
  speech, so whatever the partition, the sites' training text together is `pooled`'s.
- Small roles: 40 roles have 64 characters of training text or fewer, too few for one window
  of the default block_size; 126 have no held-out speech. A side too short for one window is one
  shorter window of all of it (the GPT takes any length up to its block_size), so every such
  site trains on its own text, neither padded nor wrapped round onto its start: its fits report
  `num_examples` 1. A side without text has no windows: a site without held-out text evaluates
  to `num_examples` 0 and no metrics; one without training text (which the natural partition
  never makes, as a role's first speech always trains) fails its fits.

Whatever the data, what a site trains and evaluates on (what its `num_examples` counts) is
next-character windows: inputs (n, block_size) token ids and targets the same
windows shifted by one, cut every `stride` characters (default `block_size`: each character is a
target once per epoch, 15,735 training windows in `pooled`, about 3,900 per site with 4 sites).
The loss is the cross entropy averaged over tokens (`next_token_loss`); `accuracy` is per token
(argmax of the logits against the next character). Sites train with Adam (a fresh optimiser per
fit, as `TorchTask` does), batch 64 and lr 1e-3 unless the fit config says otherwise; a fit's
default is one epoch of the site's windows.

The text is the copy bundled with the package (`quorum/data/tinyshakespeare/input.txt`); build a
`ShakespeareTask(path=...)` in your own module to read another file. A process reads and parses
each file once (`shared_corpus`), whatever number of sites it builds from it.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from quorum.baseline.gpt import GPT, GPTConfig, LinearFactory, next_token_loss
from quorum.baseline.task import evaluate
from quorum.data import shakespeare
from quorum.errors import TaskError
from quorum.task import Examples
from quorum.torch_task import TorchTask, adam, params_from_module
from quorum.wire.blobs import Params

BATCH_SIZE = 64
LR = 1e-3
EVAL_BATCH_SIZE = 256
"""Windows per evaluation batch: the activations of 256 windows of the default model (its MLP
alone holds 256 x 64 x 512 floats) stay well under a few hundred MB."""

DATA = "shakespeare"
"""The one data set `examples` and `site_of` know (the `[sim] data` setting): the task's text."""

_SITE = re.compile(r"site-([0-9]+)-of-([0-9]+)")


@dataclass(frozen=True, eq=False)
class Corpus:
    """A play text as every site of a process shares it: its vocabulary, its speeches, and per
    speech (read-only arrays) the speaker and whether the role hold-out keeps it back."""

    text: str
    vocabulary: shakespeare.Vocabulary
    speeches: tuple[shakespeare.Speech, ...]
    speakers: np.ndarray
    held_out: np.ndarray


_LOADING = threading.Lock()


def shared_corpus(path: str | os.PathLike[str] | None = None) -> Corpus:
    """The process's one copy of the text at `path` (default: the bundled file), read and parsed
    on first use (a file rewritten afterwards is not read again)."""
    # A site host builds its sites from several threads at once: one parse, one copy.
    with _LOADING:
        return _load_corpus(None if path is None else os.fspath(path))


@functools.cache
def _load_corpus(path: str | None) -> Corpus:
    text = shakespeare.read_text(path)
    speeches = shakespeare.parse_speeches(text)
    speakers = np.array([s.speaker for s in speeches])
    held_out = np.array(shakespeare.held_out(speeches), dtype=bool)
    speakers.flags.writeable = False
    held_out.flags.writeable = False
    return Corpus(text, shakespeare.vocabulary(text), tuple(speeches), speakers, held_out)


class ShakespeareTask:
    """`FederatedTask`, `Partitionable` and `CentralisedTask` (`quorum baseline run`) for the
    GPT on Tiny Shakespeare (see the module docstring). Centralised, `data` names the same
    splits, and the model's four block linears come from the engine's `LinearFactory`, so
    Megatron can split them over the ranks."""

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
        corpus = self._corpus()
        text = corpus.text
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
        return train, validation, corpus.vocabulary

    def site(self, data: str, device: str, seed: int) -> TorchTask:
        train, validation, vocabulary = self.texts(data)
        return self._site(
            self._nonempty(train, vocabulary, data, "training"),
            self._nonempty(validation, vocabulary, data, "validation"),
            device,
            seed,
        )

    def examples(self, data: str) -> Examples:
        """One example per speech, labelled and owned by its speaker (see the module
        docstring)."""
        speakers = self._data(data).speakers
        return Examples(labels=speakers, owners=speakers)

    def texts_of(self, data: str, indices: np.ndarray) -> tuple[str, str, shakespeare.Vocabulary]:
        """The (train, validation) text of the speeches at `indices` (positions among
        `examples(data)`), each side in file order, and the whole file's vocabulary."""
        corpus = self._data(data)
        own = np.asarray(indices)
        if own.ndim != 1 or (own.size and own.dtype.kind not in "iu"):
            raise TaskError(
                f"a site's indices must be a 1-D array of integers, got {own.dtype} of shape "
                f"{own.shape}"
            )
        own = np.sort(own.astype(np.int64))
        count = len(corpus.speeches)
        if own.size and (own[0] < 0 or own[-1] >= count):
            raise TaskError(
                f"a site's indices must be positions among the {count} speeches, got values "
                f"from {own[0]} to {own[-1]}"
            )
        train: list[str] = []
        validation: list[str] = []
        for i in own.tolist():
            side = validation if corpus.held_out[i] else train
            side.append(corpus.speeches[i].text(corpus.text))
        return "".join(train), "".join(validation), corpus.vocabulary

    def site_of(self, data: str, indices: np.ndarray, device: str, seed: int) -> TorchTask:
        train, validation, vocabulary = self.texts_of(data, indices)
        return self._site(
            self._windows(vocabulary.encode(train), shorter=True),
            self._windows(vocabulary.encode(validation), shorter=True),
            device,
            seed,
        )

    def _site(
        self, train_set: TensorDataset, test_set: TensorDataset, device: str, seed: int
    ) -> TorchTask:
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
        return self._nonempty(train, vocabulary, data, "training")

    def eval_dataset(self, data: str) -> TensorDataset:
        _, validation, vocabulary = self.texts(data)
        return self._nonempty(validation, vocabulary, data, "validation")

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

    def _nonempty(
        self, text: str, vocabulary: shakespeare.Vocabulary, data: str, name: str
    ) -> TensorDataset:
        """The windows of `text`; TaskError when it is too short for one."""
        dataset = self._windows(vocabulary.encode(text))
        if len(dataset) == 0:
            raise TaskError(
                f"Shakespeare data {data!r} has too little {name} text for one window of "
                f"{self.config.block_size + 1} characters; use fewer sites"
            )
        return dataset

    def _corpus(self) -> Corpus:
        corpus = shared_corpus(self.path)
        if corpus.vocabulary.size != self.config.vocab_size:
            raise TaskError(
                f"the text has {corpus.vocabulary.size} distinct characters but the model's "
                f"vocab_size is {self.config.vocab_size}"
            )
        return corpus

    def _data(self, data: str) -> Corpus:
        if data != DATA:
            raise TaskError(
                f"unknown Shakespeare data set {data!r}: this task splits {DATA!r} (a site's own "
                "data is 'site-K-of-N', 'pooled' or 'nanogpt')"
            )
        return self._corpus()

    def _windows(self, ids: np.ndarray, *, shorter: bool = False) -> TensorDataset:
        """The next-character windows of `ids`. With `shorter`, a stream of 2 to block_size
        tokens, too short for one window, is one window of all of it (see the module
        docstring)."""
        block = self.config.block_size
        if shorter and 1 < len(ids) <= block:
            block = len(ids) - 1
        inputs, targets = shakespeare.windows(ids, block, self.stride)
        return TensorDataset(torch.from_numpy(inputs), torch.from_numpy(targets))


def _token_hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    return int((logits.argmax(dim=-1) == targets).sum()), targets.numel()


task = ShakespeareTask()
