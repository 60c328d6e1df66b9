"""The character-level GPT on Tiny Shakespeare, one site per group of speaking roles:
`examples.shakespeare.task:task`."""
