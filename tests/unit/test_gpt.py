"""The character-level GPT: shapes, causality, size, seeded init, learning, and the layouts that
let tensor parallelism shard its linears exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from quorum.baseline.gpt import (
    GPT,
    MLP,
    Block,
    CausalSelfAttention,
    GPTConfig,
    next_token_loss,
    parameter_count,
)
from quorum.errors import ConfigError, TaskError

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def _ids(batch: int, time: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, time), generator=torch.Generator().manual_seed(seed))


def test_logits_have_one_row_per_position() -> None:
    model = GPT(TINY)
    assert model(_ids(3, 8, 11)).shape == (3, 8, 11)
    assert model(_ids(2, 5, 11)).shape == (2, 5, 11)


def test_rejects_sequences_longer_than_the_block_and_unbatched_input() -> None:
    model = GPT(TINY)
    with pytest.raises(TaskError, match="block size 8"):
        model(_ids(1, 9, 11))
    with pytest.raises(TaskError, match="batch, time"):
        model(torch.zeros(8, dtype=torch.int64))


def test_a_later_token_does_not_change_earlier_logits() -> None:
    model = GPT(TINY).eval()
    ids = _ids(2, 8, 11)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 11
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert torch.equal(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize(
    "config",
    [
        GPTConfig(),
        GPTConfig(bias=True),
        GPTConfig(vocab_size=7, block_size=3, n_layer=3, n_head=3, n_embd=9, bias=True),
        TINY,
    ],
)
def test_parameter_count_formula(config: GPTConfig) -> None:
    assert parameter_count(config) == sum(p.numel() for p in GPT(config).parameters())


def test_default_size() -> None:
    # 2VC + TC + C + L(12C^2 + 2C) with V=65, T=64, C=128, L=4.
    assert parameter_count(GPTConfig()) == 812_416


def test_same_seed_same_weights_and_the_global_generator_is_untouched() -> None:
    state = torch.get_rng_state()
    a, b, c = GPT(TINY, seed=3), GPT(TINY, seed=3), GPT(TINY, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.state_dict()["wte.weight"], c.state_dict()["wte.weight"])


def test_gpt2_initialisation() -> None:
    config = GPTConfig(n_layer=8)
    model = GPT(config, seed=0)
    residual = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.proj.weight")):
            assert p.std().item() == pytest.approx(residual, rel=0.05), name
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert p.std().item() == pytest.approx(0.02, rel=0.05), name
            assert abs(p.mean().item()) < 0.002, name
    biased = GPT(GPTConfig(n_layer=1, bias=True))
    for name, p in biased.named_parameters():
        if name.endswith(".bias"):
            assert not p.any(), name


def test_loss_falls_on_a_small_text() -> None:
    torch.manual_seed(0)
    text = "to be or not to be, that is the question. " * 8
    chars = sorted(set(text))
    stream = torch.tensor([chars.index(ch) for ch in text])
    config = GPTConfig(vocab_size=len(chars), block_size=16, n_layer=2, n_head=2, n_embd=32)
    starts = torch.arange(0, len(stream) - 17, 4)
    inputs = torch.stack([stream[s : s + 16] for s in starts])
    targets = torch.stack([stream[s + 1 : s + 17] for s in starts])
    model = GPT(config, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = next_token_loss(model(inputs), targets)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(len(chars)), rel=0.1)
    assert losses[-1] < 0.5 * losses[0]


def test_next_token_loss_is_the_mean_over_tokens() -> None:
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    targets = _ids(3, 4, 5)
    per_token = [
        nn.functional.cross_entropy(logits[i, t : t + 1], targets[i, t : t + 1])
        for i in range(3)
        for t in range(4)
    ]
    assert next_token_loss(logits, targets).item() == pytest.approx(
        torch.stack(per_token).mean().item(), rel=1e-6
    )


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="multiple of n_head"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ConfigError, match="n_layer"):
        GPTConfig(n_layer=0)
    with pytest.raises(ConfigError, match="dropout"):
        GPTConfig(dropout=1.0)


class _Shards:
    """A stand-in for a tensor-parallel factory: plain linears of one rank's shape."""

    def __init__(self, parallel_size: int) -> None:
        self.parallel_size = parallel_size

    def column(
        self, in_features: int, out_features: int, *, bias: bool, init_std: float
    ) -> nn.Module:
        return nn.Linear(in_features, out_features // self.parallel_size, bias=bias)

    def row(self, in_features: int, out_features: int, *, bias: bool, init_std: float) -> nn.Module:
        return nn.Linear(in_features // self.parallel_size, out_features, bias=bias)


def _shard(dense: nn.Module, local: nn.Module, rank: int, size: int) -> None:
    """Copies rank `rank`'s slice of every linear of `dense` into `local`, as gpt.py's
    docstring prescribes: rows of a column layer, columns of a row layer."""
    column = {"qkv", "fc"}
    with torch.no_grad():
        for name, module in local.named_children():
            if not isinstance(module, nn.Linear):
                continue
            weight = getattr(dense, name).weight
            if name in column:
                rows = weight.shape[0] // size
                module.weight.copy_(weight[rank * rows : (rank + 1) * rows])
            else:
                cols = weight.shape[1] // size
                module.weight.copy_(weight[:, rank * cols : (rank + 1) * cols])


@pytest.mark.parametrize("size", [2, 4])
def test_sharded_sublayers_sum_to_the_dense_ones(size: int) -> None:
    # Row-parallel outputs are all-reduced (summed): the ranks' partial outputs must add up to
    # the dense sublayer's, which holds only if the QKV layout keeps each rank's heads whole.
    config = GPTConfig(vocab_size=5, block_size=6, n_layer=1, n_head=4, n_embd=16)
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(0))
    dense = GPT(config).blocks[0]
    assert isinstance(dense, Block)
    dense_attn, dense_mlp = dense.attn, dense.mlp
    attn_sum = torch.zeros(2, 6, 16)
    mlp_sum = torch.zeros(2, 6, 16)
    for rank in range(size):
        attn = CausalSelfAttention(config, _Shards(size))
        mlp = MLP(config, _Shards(size))
        assert attn.local_heads == 4 // size
        _shard(dense_attn, attn, rank, size)
        _shard(dense_mlp, mlp, rank, size)
        with torch.no_grad():
            attn_sum += attn(x)
            mlp_sum += mlp(x)
    with torch.no_grad():
        assert torch.allclose(attn_sum, dense_attn(x), atol=1e-6)
        assert torch.allclose(mlp_sum, dense_mlp(x), atol=1e-6)


def test_heads_must_divide_over_the_parallel_ranks() -> None:
    with pytest.raises(ConfigError, match="tensor-parallel size"):
        GPT(GPTConfig(n_head=4, n_embd=16), _Shards(3))
