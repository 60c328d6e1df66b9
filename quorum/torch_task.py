"""TorchTask: a torch model, its data, a loss and an optimiser, as a `SiteTask`.

One training loop (`train`) and one evaluation loop (`evaluate`) serve federated rounds
(`TorchTask.fit` / `TorchTask.evaluate`) and the pooled and local-only baselines alike, so the
baselines a report draws are computed by the same code as the federated runs.

Fit config keys (a JSON object sent by the server with each task):

- `lr` (float): learning rate of a fresh optimiser built for this fit (default: the task's `lr`).
- `local_steps` (int) or `local_epochs` (int): optimiser steps, cycling through the shuffled
  training set as often as needed, or full passes over it; at most one of the two (default: one
  epoch). The last batch of a pass may be smaller than `batch_size`.
- `batch_size` (int, optional): overrides the task's batch size.
- `proximal_mu` (float, default 0): FedProx; adds `mu/2 * ||w - w_global||^2` to the loss, where
  `w_global` are the parameters the fit started from (applied to the gradient directly).
- `round` (int, optional): the server's round number. The shuffling (and any randomness in the
  model, such as dropout) is seeded from the seed and this number, so that successive rounds
  see different batches and a round re-run after a restart sees the same ones. Without it, the
  number of fits this task has done so far is used.
- `seed` (int, optional): the run's seed (the server sends it); without it, the task's own.

`round`, `seed`, `proximal_mu` and the two DP keys below are Quorum's own entries, read (and
checked) as `quorum.fitconfig.FitConfig`; the others are this task's settings.

With differential privacy enabled (`TorchTask.enable_dp(ledger)`), a fit trains with DP-SGD
(Opacus: per-example gradients clipped to the ledger's `max_grad_norm`, Gaussian noise, Poisson
sampling of each training example with probability `batch_size / N` at every step) and needs two
more keys:

- `run_id` (str): the run, whose privacy the site's ledger accounts for.
- `rounds` (int): the run's planned number of rounds. The noise is calibrated once, at the run's
  first fit, so that `rounds` fits of this fit's number of steps spend the site's ε budget.

Before training, a fit that would spend more than the budget raises `BudgetExhausted`; after
training the ledger records the steps and the fit's metrics include the ledger's report
(`dp_epsilon` spent so far, `dp_delta`, `dp_noise_multiplier`, ...). FedProx is not supported
with DP.

Evaluation reports `loss` (mean over examples, assuming `loss_fn` averages over its batch) and
`accuracy`, with `predict` turning outputs into labels compared with the targets. The default rule:
outputs of one logit per example (shape (n,) or (n, 1)) are binary, `sigmoid(logit) > 0.5`, compared
with 0/1 targets; otherwise multi-class, `argmax` over the last dimension, compared with class
indices. A task without test examples reports `num_examples` 0 and no metrics.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from quorum.errors import TaskError
from quorum.fitconfig import FitConfig
from quorum.privacy.dp.accounting import opacus_module
from quorum.privacy.dp.ledger import PrivacyLedger
from quorum.task import EvalResult, FitResult, JSONConfig
from quorum.wire.blobs import Params

OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Predict = Callable[[torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]

DEFAULT_EVAL_BATCH_SIZE = 1024


def sgd(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Plain SGD (no momentum), the default optimiser."""
    return torch.optim.SGD(params, lr=lr)


def adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


def params_from_module(module: nn.Module) -> Params:
    """The module's state_dict as CPU numpy copies, in state_dict order. Float tensors keep their
    dtype (bfloat16, which numpy lacks, becomes float32); integer buffers stay integers."""
    out: Params = {}
    for name, tensor in module.state_dict().items():
        t = tensor.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        out[name] = t.to(device="cpu", copy=True).numpy()
    return out


def load_params(module: nn.Module, params: Params) -> None:
    """Copies `params` into the module's state_dict tensors (casting the dtype, keeping the
    device). Strict: a missing or unexpected name, or a shape mismatch, raises TaskError."""
    state = module.state_dict()
    missing = [name for name in state if name not in params]
    unexpected = [name for name in params if name not in state]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected}")
        raise TaskError(f"parameters do not match the model: {'; '.join(parts)}")
    for name, target in state.items():
        value = params[name]
        if tuple(value.shape) != tuple(target.shape):
            raise TaskError(
                f"tensor {name!r} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target.shape)}"
            )
    with torch.no_grad():
        for name, target in state.items():
            array = np.asarray(params[name])
            if not array.flags.writeable:  # torch.from_numpy warns on read-only views
                array = array.copy()
            target.copy_(torch.from_numpy(array))


def resolve_device(device: str) -> torch.device:
    """The torch device for a name: `auto` (cuda when available, else cpu), `cpu`, `cuda` or
    `cuda:N`; TaskError when a GPU is asked for and none is visible."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise TaskError(f"device {device!r} was asked for but torch sees no CUDA GPU")
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise TaskError(f"device {device!r} is not a valid CUDA device name") from None
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise TaskError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return resolved
    raise TaskError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def default_predict(outputs: torch.Tensor) -> torch.Tensor:
    """One logit per example -> `sigmoid > 0.5` as 0.0/1.0; several -> argmax of the last dim."""
    if outputs.dim() <= 1 or outputs.shape[-1] == 1:
        return (torch.sigmoid(outputs) > 0.5).to(outputs.dtype)
    return outputs.argmax(dim=-1)


class Batches:
    """Batches of a data set on a device. A TensorDataset of (inputs, targets) is moved to the
    device once and indexed directly (no DataLoader, no collation); any other data set goes
    through a DataLoader whose shuffling draws from the given generator."""

    def __init__(self, dataset: Dataset[Any], batch_size: int, device: torch.device) -> None:
        if batch_size < 1:
            raise TaskError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        if isinstance(dataset, TensorDataset):
            if len(dataset.tensors) != 2:
                raise TaskError(
                    f"a TensorDataset needs 2 tensors (inputs, targets), has {len(dataset.tensors)}"
                )
            x, y = dataset.tensors
            self._tensors = (x.to(device), y.to(device))
        self._size = len(self._tensors[0]) if self._tensors is not None else _dataset_len(dataset)

    def __len__(self) -> int:
        return self._size

    def with_batch_size(self, batch_size: int) -> Batches:
        """The same data (already on the device) in batches of another size."""
        if batch_size < 1:
            raise TaskError(f"batch_size must be at least 1, got {batch_size}")
        if batch_size == self.batch_size:
            return self
        other = copy.copy(self)
        other.batch_size = batch_size
        return other

    def batches_per_epoch(self) -> int:
        return math.ceil(self._size / self.batch_size)

    def epoch(self, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """One pass: shuffled from `generator` when given, else in order."""
        if self._tensors is not None:
            x, y = self._tensors
            if generator is None:
                for start in range(0, self._size, self.batch_size):
                    yield x[start : start + self.batch_size], y[start : start + self.batch_size]
                return
            order = torch.randperm(self._size, generator=generator).to(self.device)
            for start in range(0, self._size, self.batch_size):
                index = order[start : start + self.batch_size]
                yield x[index], y[index]
            return
        loader: DataLoader[Any] = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=generator is not None,
            generator=generator,
        )
        for batch in loader:
            if not isinstance(batch, Sequence) or len(batch) != 2:
                raise TaskError("each item of the data set must be a pair (inputs, targets)")
            inputs, targets = batch
            yield inputs.to(self.device), targets.to(self.device)

    def take(self, index: torch.Tensor) -> Batch:
        """The examples at the given positions (a 1-D index tensor, possibly empty) as one
        batch on the device."""
        if self._tensors is not None:
            x, y = self._tensors
            index = index.to(self.device)
            return x[index], y[index]
        positions = [int(i) for i in index.tolist()] or [0]
        batch = default_collate([self.dataset[i] for i in positions])
        if not isinstance(batch, Sequence) or len(batch) != 2:
            raise TaskError("each item of the data set must be a pair (inputs, targets)")
        inputs, targets = batch
        if len(index) == 0:
            inputs, targets = inputs[:0], targets[:0]
        return inputs.to(self.device), targets.to(self.device)


def _dataset_len(dataset: Dataset[Any]) -> int:
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TaskError("the data set must have a length (a map-style torch Dataset)") from None


def train(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
) -> float:
    """Trains `model` in place for `steps` optimiser steps (cycling through shuffled passes) or
    `epochs` passes, and returns the mean training loss over the steps (without the proximal term;
    NaN when there were no steps).

    With `proximal_mu > 0` (FedProx), the gradient of `mu/2 * ||w - w0||^2` is added, `w0` being
    the trainable parameters as they were when this call started."""
    if (steps is None) == (epochs is None):
        raise TaskError("train needs exactly one of steps and epochs")
    total = steps if steps is not None else (epochs or 0) * batches.batches_per_epoch()
    if total < 0:
        raise TaskError(f"the number of local steps or epochs must not be negative, got {total}")
    if total == 0:
        return math.nan
    if len(batches) == 0:
        raise TaskError("there are no training examples to train on")
    trainable = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in trainable] if proximal_mu > 0 else []
    model.train()
    loss_sum = torch.zeros((), device=batches.device)
    done = 0
    while done < total:
        for inputs, targets in batches.epoch(generator):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()  # type: ignore[no-untyped-call]
            if anchor:
                with torch.no_grad():
                    for p, p0 in zip(trainable, anchor, strict=True):
                        pull = (p - p0).mul_(proximal_mu)
                        if p.grad is None:
                            p.grad = pull
                        else:
                            p.grad.add_(pull)
            optimizer.step()
            loss_sum += loss.detach()
            done += 1
            if done == total:
                break
    return float(loss_sum.item()) / total


def train_dp(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    sample_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    generator: torch.Generator,
) -> float:
    """Trains `model` in place for `steps` DP-SGD steps and returns the mean training loss over
    the steps that drew at least one example (NaN when none did).

    At each step every training example is drawn independently with probability `sample_rate`
    (from `generator`); per-example gradients (Opacus) are clipped to `max_grad_norm`, summed,
    noised with standard deviation `noise_multiplier * max_grad_norm` and divided by the expected
    batch size. A step that draws no example still applies the noise. The noise comes from torch's
    global generator of the model's device."""
    n = len(batches)
    if n == 0:
        raise TaskError("there are no training examples to train on")
    opacus = opacus_module("opacus")
    optimizers = opacus_module("opacus.optimizers")
    try:
        wrapped = opacus.GradSampleModule(model)
    except (NotImplementedError, ValueError) as exc:
        raise TaskError(f"the model cannot be trained with DP-SGD (Opacus): {exc}") from None
    try:
        dp_optimizer = optimizers.DPOptimizer(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=max(1, round(sample_rate * n)),
        )
        wrapped.train()
        loss_sum = torch.zeros((), device=batches.device)
        drawn = 0
        with warnings.catch_warnings():
            # Opacus's backward hooks fire on module outputs when inputs need no gradient.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(steps):
                index = (torch.rand(n, generator=generator) < sample_rate).nonzero().squeeze(1)
                inputs, targets = batches.take(index)
                dp_optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(wrapped(inputs), targets)
                loss.backward()  # type: ignore[no-untyped-call]
                dp_optimizer.step()
                if len(index):
                    loss_sum += loss.detach()
                    drawn += 1
    finally:
        wrapped._close()
    return float(loss_sum.item()) / drawn if drawn else math.nan


def evaluate(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFn,
    predict: Predict = default_predict,
) -> dict[str, float]:
    """`loss` (mean over examples) and `accuracy` of `model` on every example of `batches`.

    Accuracy is the fraction of target entries that `predict(outputs)` gets right: one per example
    for (n,) or (n, 1) targets, one per token for (n, t) sequence targets."""
    n = len(batches)
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan}
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=batches.device)
    correct = torch.zeros((), dtype=torch.int64, device=batches.device)
    counted = 0
    with torch.no_grad():
        for inputs, targets in batches.epoch():
            outputs = model(inputs)
            loss_sum += loss_fn(outputs, targets).double() * len(targets)
            predicted = predict(outputs)
            correct += (predicted.reshape(targets.shape) == targets).sum()
            counted += targets.numel()
    accuracy = int(correct.item()) / counted if counted else math.nan
    return {"loss": float(loss_sum.item()) / n, "accuracy": accuracy}


def round_generator(seed: int, round_index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, round): distinct streams per round, reproducible."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, round_index & 0xFFFFFFFF])
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0] >> 1))


class TorchTask:
    """A `SiteTask` over a torch model and its site's train and test data sets.

    `train_data` and `test_data` yield (inputs, targets) pairs; a TensorDataset of two tensors
    takes a fast path (both are moved to the device once, so keep such data sets small enough for
    device memory). `loss_fn` must average over its batch (torch's default reduction); a loss
    module is moved to the device. `optimizer` builds a fresh
    optimiser from the trainable parameters and the learning rate at each fit. See the module
    docstring for the fit config keys and the accuracy rule.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset[Any],
        test_data: Dataset[Any],
        loss_fn: LossFn,
        optimizer: OptimizerFactory = sgd,
        *,
        device: str = "auto",
        batch_size: int = 32,
        seed: int = 0,
        lr: float = 0.01,
        predict: Predict = default_predict,
        eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    ) -> None:
        self.device = resolve_device(device)
        # torch's optimisers import torch._dynamo on their first step (about 1 s): done here,
        # the cost falls on the agent's start, not inside the first round's fit.
        import torch._dynamo  # noqa: F401

        self.model = model.to(self.device)
        self.loss_fn = loss_fn.to(self.device) if isinstance(loss_fn, nn.Module) else loss_fn
        self.optimizer = optimizer
        self.seed = seed
        self.lr = lr
        self.predict = predict
        self.train_batches = Batches(train_data, batch_size, self.device)
        self.test_batches = Batches(test_data, eval_batch_size, self.device)
        self._fits = 0
        self._dp: PrivacyLedger | None = None

    def enable_dp(self, ledger: PrivacyLedger) -> None:
        """Trains every later fit with DP-SGD, accounted for (and refused once the budget is
        spent) by `ledger`. See the module docstring for the config keys this requires."""
        self._dp = ledger

    def fit(self, params: Params, config: JSONConfig) -> FitResult:
        load_params(self.model, params)
        entries = FitConfig.read(config)
        lr = _number(config, "lr", self.lr)
        mu = entries.proximal_mu or 0.0
        steps = _count(config, "local_steps")
        epochs = _count(config, "local_epochs")
        if steps is not None and epochs is not None:
            raise TaskError("the fit config sets both local_steps and local_epochs; set one")
        if steps is None and epochs is None:
            epochs = 1
        batch_size = _count(config, "batch_size")
        batches = self.train_batches
        if batch_size is not None:
            batches = batches.with_batch_size(batch_size)
        # The run's seed (sent with every task) drives sampling, so a run is reproducible
        # whatever seed each agent was started with.
        generator = round_generator(
            self.seed if entries.seed is None else entries.seed,
            self._fits if entries.round is None else entries.round,
        )
        self._fits += 1
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer(trainable, lr)
        if self._dp is not None:
            return self._fit_dp(self._dp, entries, batches, optimizer, steps, epochs, mu, generator)
        with _seeded_torch(generator, self.device):
            loss = train(
                self.model,
                batches,
                self.loss_fn,
                optimizer,
                steps=steps,
                epochs=epochs,
                generator=generator,
                proximal_mu=mu,
            )
        return FitResult(
            params=params_from_module(self.model),
            num_examples=len(batches),
            metrics={} if math.isnan(loss) else {"loss": loss},
        )

    def _fit_dp(
        self,
        ledger: PrivacyLedger,
        entries: FitConfig,
        batches: Batches,
        optimizer: torch.optim.Optimizer,
        steps: int | None,
        epochs: int | None,
        mu: float,
        generator: torch.Generator,
    ) -> FitResult:
        if mu > 0:
            raise TaskError("FedProx (proximal_mu > 0) is not supported with differential privacy")
        run_id, rounds = entries.run_id, entries.rounds
        if run_id is None:
            raise TaskError("fit config 'run_id' is required with differential privacy")
        if rounds is None:
            raise TaskError(
                "fit config 'rounds' (the run's planned number of rounds) is required with "
                "differential privacy"
            )
        n = len(batches)
        if n == 0:
            raise TaskError("there are no training examples to train on")
        per_fit = steps if steps is not None else (epochs or 0) * batches.batches_per_epoch()
        if per_fit < 1:
            raise TaskError("a fit with differential privacy needs at least one local step")
        sigma = ledger.plan(run_id, min(1.0, batches.batch_size / n), rounds * per_fit)
        # The plan fixes the sample rate for the whole run, whatever later fits ask for.
        sample_rate = ledger.sample_rate(run_id)
        ledger.check(run_id, per_fit)
        with _seeded_torch(generator, self.device):
            loss = train_dp(
                self.model,
                batches,
                self.loss_fn,
                optimizer,
                steps=per_fit,
                sample_rate=sample_rate,
                noise_multiplier=sigma,
                max_grad_norm=ledger.max_grad_norm(run_id),
                generator=generator,
            )
        ledger.record(run_id, per_fit)
        metrics = {} if math.isnan(loss) else {"loss": loss}
        metrics.update(ledger.report(run_id))
        return FitResult(params=params_from_module(self.model), num_examples=n, metrics=metrics)

    def evaluate(self, params: Params, config: JSONConfig) -> EvalResult:
        if len(self.test_batches) == 0:
            # NaN metrics would spoil the round's example-weighted means, even at weight 0.
            return EvalResult(num_examples=0)
        load_params(self.model, params)
        metrics = evaluate(self.model, self.test_batches, self.loss_fn, self.predict)
        return EvalResult(num_examples=len(self.test_batches), metrics=metrics)


@contextlib.contextmanager
def _seeded_torch(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Seeds torch's global generators (dropout and the like) from `generator` for the duration
    of a fit, restoring their previous state afterwards."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _number(config: JSONConfig, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TaskError(f"fit config {key!r} must be a finite number, got {value!r}")
    return float(value)


def _count(config: JSONConfig, key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TaskError(f"fit config {key!r} must be a non-negative integer, got {value!r}")
    return value
