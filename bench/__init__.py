"""Quorum's benchmarks: `python bench/round_time.py` runs Quorum and Flower on one workload."""
