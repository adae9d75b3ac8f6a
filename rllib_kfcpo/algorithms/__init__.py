"""Safe RL algorithms: each a small difference over the shared machinery in `safe/`."""
