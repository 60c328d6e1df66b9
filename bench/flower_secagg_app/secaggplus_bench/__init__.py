"""secaggplus_bench: the Quorum benchmark workload through Flower's SecAgg+ workflow."""
