"""The large-model track (DESIGN.md section 12): centralised baselines of federated tasks.

- `spec`: `BaselineSpec`, the settings of one job; `launcher`: the torchrun command and the job
  folder's files (no torch import); `worker`: what each rank runs; `engines`: DDP, DeepSpeed
  ZeRO and Megatron-core tensor parallelism; `task`: `CentralisedTask`, what a task offers the
  worker; `memory`: per-rank state bytes; `cli`: `quorum baseline run`.
- `gpt`: the character-level GPT of the flagship Tiny Shakespeare task, with the linear layers
  that tensor parallelism replaces behind one factory.

This package depends on torch and its optional engines (`quorum-fl[llm]`) only.
"""
