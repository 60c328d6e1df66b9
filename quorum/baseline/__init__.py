"""The large-model track (DESIGN.md section 12): centralised baselines of federated tasks.

- `quorum.baseline.gpt`: the character-level GPT of the flagship Tiny Shakespeare task, with the
  linear layers that tensor parallelism replaces behind one factory.

This package depends on torch (and, later, its optional engines) only.
"""
