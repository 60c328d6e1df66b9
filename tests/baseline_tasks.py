"""Tiny centralised tasks for the baseline tests: the Shakespeare GPT at a size that trains a
step in milliseconds (2 heads, so tensor parallelism over 2 ranks splits it)."""

from __future__ import annotations

from examples.shakespeare.task import ShakespeareTask
from quorum.baseline.gpt import GPTConfig

TINY = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)

tiny_gpt = ShakespeareTask(TINY, batch_size=8, lr=3e-3)
