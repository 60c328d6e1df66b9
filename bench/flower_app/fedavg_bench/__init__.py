"""fedavg_bench: Flower framework-overhead benchmark app (from the team's reference kit)."""
