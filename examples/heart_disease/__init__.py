"""FLamby's Fed-Heart-Disease benchmark as a Quorum task: `examples.heart_disease.task:task`."""
