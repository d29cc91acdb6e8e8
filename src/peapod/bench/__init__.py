"""The lab wing: the benchmark grid, training and evaluation speed, and the user-prompt ablation. Nothing in the library below it imports it."""
