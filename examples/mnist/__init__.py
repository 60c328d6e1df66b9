"""MNIST digits for simulations with many virtual sites, a small CNN:
`examples.mnist.task:task`."""
