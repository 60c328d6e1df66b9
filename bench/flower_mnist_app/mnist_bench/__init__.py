"""mnist_bench: Flower's side of bench/sim_time.py's scenario m (the MNIST CNN, real training)."""
