"""Loaders for the data sets bundled with Quorum's examples.

- `quorum.data.heart_disease`: the UCI Heart Disease files of four hospitals (Cleveland, Budapest,
  Zurich and Basel, Long Beach), bundled under `quorum/data/heart_disease/` with their provenance
  and licence (CC BY 4.0), split and standardised as FLamby's Fed-Heart-Disease benchmark does.

Loaders read plain files and return numpy arrays; they never download anything.
"""
