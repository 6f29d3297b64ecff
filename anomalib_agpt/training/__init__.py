"""Training on normal images: synthetic anomalies, pixel losses, what trains and its schedule."""
