"""A small character-level GPT (nanoGPT's architecture), defined once for every engine.

Token and position embeddings, `n_layer` pre-LayerNorm blocks (causal self-attention, then a 4x
MLP with GELU, each added to the residual stream), a final LayerNorm and a linear head to the
vocabulary. Attention is `scaled_dot_product_attention(is_causal=True)`.

Tensor parallelism is a constructor argument, not a second model. The four linears of a block
come from a `LinearFactory`: `column` builds the QKV projection (`attn.qkv`) and the first MLP
layer (`mlp.fc`), `row` the attention output projection (`attn.proj`) and the second MLP layer
(`mlp.proj`): Megatron's pairing (Shoeybi et al. 2019), where a column-parallel layer splits its
output features over the ranks and the row-parallel layer after it splits its input features the
same way, so a block needs one all-reduce per sublayer and nothing in between. `DenseLinears`
(the default) builds plain `nn.Linear`s; a Megatron-core factory builds `ColumnParallelLinear`
(`gather_output=False`) and `RowParallelLinear` (`input_is_parallel=True`) behind the same
interface, each wrapped to return a tensor (Megatron's layers return `(output, bias)`), and
says through `parallel_size` over how many ranks it splits. Two layouts make that split exact:

- The fused QKV output is laid out head by head, `(head, q|k|v, head_size)`, not nanoGPT's
  `(q|k|v, head, head_size)`, so the contiguous slice of output features a rank holds is whole
  heads, with their queries, keys and values together (Megatron's own layout). The attention
  computes `n_head / parallel_size` local heads.
- The attention output is concatenated head-major before `attn.proj`, so rank r's slice of
  `attn.proj`'s input features is exactly the output of its own heads.

Sharding a dense model for `parallel_size = P` is therefore: rank r takes rows
`[r*out/P, (r+1)*out/P)` of each column layer's weight (and bias), columns `[r*in/P,
(r+1)*in/P)` of each row layer's weight, and the whole row layer's bias.

Embeddings, LayerNorms and the head stay whole (replicated) on every rank. The head is not tied
to the token embedding: tying would save only `vocab_size * n_embd` parameters (8,320 of the
default 812,416) and makes one tensor appear under two names, which safetensors blobs, ZeRO-3
partitioning and Opacus's per-sample gradients each handle specially; untied, every parameter has
one name and one owner.

Initialisation is GPT-2's: every weight normal(0, 0.02), biases zero, LayerNorms one/zero, and the
two residual projections (`attn.proj`, `mlp.proj`) normal(0, 0.02 / sqrt(2 * n_layer)), so that
the residual stream's variance does not grow with depth. `GPT(config, seed=...)` builds the same
weights for the same seed on CPU without touching torch's global generator; a factory that
initialises on a GPU seeds that device's generator itself (Megatron:
`model_parallel_cuda_manual_seed`), or builds on CPU (`use_cpu_initialization=True`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from quorum.errors import ConfigError, TaskError

INIT_STD = 0.02


@dataclass(frozen=True)
class GPTConfig:
    """The model's shape. The defaults (812,416 parameters) train on a laptop CPU in minutes;
    `vocab_size` 65 is Tiny Shakespeare's character set. `bias` adds biases to the linears
    (not the head) and LayerNorms; nanoGPT finds the model a little better and faster without."""

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"GPTConfig.n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


def parameter_count(config: GPTConfig) -> int:
    """The number of parameters of `GPT(config)`: embeddings `(V + T) C`, per block
    `12 C^2 + 2 C` (QKV 3C^2, attention output C^2, MLP 8C^2, two LayerNorm weights) plus
    `11 C` of biases with `bias` (QKV 3C, attention output C, MLP 4C + C, LayerNorms 2C), the
    final LayerNorm `C` (+ `C`), and the head `C V`."""
    v, t, c, n = config.vocab_size, config.block_size, config.n_embd, config.n_layer
    block = 12 * c * c + 2 * c + (11 * c if config.bias else 0)
    return (v + t) * c + n * block + (2 * c if config.bias else c) + c * v


class LinearFactory(Protocol):
    """Builds a block's linears. Each built module maps (..., in_features) to (...,
    out_features / parallel_size) for `column` and (..., in_features / parallel_size) to (...,
    out_features) for `row`, returning a tensor, and initialises its weight normal(0, init_std)
    and its bias zero."""

    @property
    def parallel_size(self) -> int:
        """How many ranks a column layer's outputs (and a row layer's inputs) are split over."""
        ...

    def column(
        self, in_features: int, out_features: int, *, bias: bool, init_std: float
    ) -> nn.Module:
        """A layer whose output features may be split over the ranks (QKV, first MLP layer)."""
        ...

    def row(self, in_features: int, out_features: int, *, bias: bool, init_std: float) -> nn.Module:
        """A layer whose input features may be split over the ranks (attention output, second
        MLP layer); its output is whole (summed over the ranks)."""
        ...


class DenseLinears:
    """The single-process factory: plain `nn.Linear`s (DDP, DeepSpeed, federated sites)."""

    parallel_size = 1

    def column(
        self, in_features: int, out_features: int, *, bias: bool, init_std: float
    ) -> nn.Module:
        return _linear(in_features, out_features, bias, init_std)

    def row(self, in_features: int, out_features: int, *, bias: bool, init_std: float) -> nn.Module:
        return _linear(in_features, out_features, bias, init_std)


def _linear(in_features: int, out_features: int, bias: bool, init_std: float) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.normal_(layer.weight, mean=0.0, std=init_std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, linears: LinearFactory) -> None:
        super().__init__()
        if config.n_head % linears.parallel_size:
            raise ConfigError(
                f"n_head ({config.n_head}) must be a multiple of the tensor-parallel size "
                f"({linears.parallel_size})"
            )
        self.local_heads = config.n_head // linears.parallel_size
        self.head_size = config.head_size
        self.dropout = config.dropout
        c = config.n_embd
        self.qkv = linears.column(c, 3 * c, bias=config.bias, init_std=INIT_STD)
        self.proj = linears.row(c, c, bias=config.bias, init_std=_residual_std(config))
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        qkv = self.qkv(x).view(batch, time, self.local_heads, 3, self.head_size)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (batch, heads, time, head_size)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).reshape(batch, time, self.local_heads * self.head_size)
        out: torch.Tensor = self.resid_dropout(self.proj(y))
        return out


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, linears: LinearFactory) -> None:
        super().__init__()
        c = config.n_embd
        self.fc = linears.column(c, 4 * c, bias=config.bias, init_std=INIT_STD)
        self.gelu = nn.GELU()
        self.proj = linears.row(4 * c, c, bias=config.bias, init_std=_residual_std(config))
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.proj(self.gelu(self.fc(x))))
        return out


class Block(nn.Module):
    def __init__(self, config: GPTConfig, linears: LinearFactory) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, linears)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, linears)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    """Token ids (batch, time) -> next-token logits (batch, time, vocab_size), time at most
    `block_size`. See the module docstring for `linears` and the initialisation."""

    def __init__(
        self, config: GPTConfig, linears: LinearFactory | None = None, *, seed: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        factory = DenseLinears() if linears is None else linears
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.wte = nn.Embedding(config.vocab_size, config.n_embd)
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList(Block(config, factory) for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            for weight in (self.wte.weight, self.wpe.weight, self.head.weight):
                nn.init.normal_(weight, mean=0.0, std=INIT_STD)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.dim() != 2:
            raise TaskError(f"GPT takes token ids of shape (batch, time), got {tuple(idx.shape)}")
        time = idx.shape[1]
        if time > self.config.block_size:
            raise TaskError(
                f"a sequence of {time} tokens is longer than the block size "
                f"{self.config.block_size}"
            )
        positions = torch.arange(time, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln_f(x))
        return logits


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross entropy of (..., vocab) logits against (...) token ids, averaged over every token
    (for equal-length windows, also the mean over windows that `TorchTask` assumes)."""
    loss: torch.Tensor = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return loss


def _residual_std(config: GPTConfig) -> float:
    return INIT_STD / math.sqrt(2 * config.n_layer)
