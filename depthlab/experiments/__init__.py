"""Experiments: one module per question, each a grid of runs plus the table it produces."""
