"""Privacy mechanisms that keep individual site updates from the server: secure aggregation."""
