"""Loaders for the data sets bundled with Quorum's examples.

- `quorum.data.heart_disease`: the UCI Heart Disease files of four hospitals (Cleveland, Budapest,
  Zurich and Basel, Long Beach), bundled under `quorum/data/heart_disease/` with their provenance
  and licence (CC BY 4.0), split and standardised as FLamby's Fed-Heart-Disease benchmark does.
- `quorum.data.mnist`: MNIST's original IDX files. Not bundled: it reads the official test set
  from `../shared/data/mnist` beside a source checkout (or a folder you pass) and splits it into
  train and test sets.
- `quorum.data.shakespeare`: Tiny Shakespeare as characters, nanoGPT's train/validation split,
  and the split by speaking role (308 speakers) into federated sites, bundled under
  `quorum/data/tinyshakespeare/` with its provenance (MIT, public-domain text).

Loaders read plain files and return numpy arrays; they never download anything.
"""
