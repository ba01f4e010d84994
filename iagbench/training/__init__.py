"""The training engine behind `iagbench train`: spec, loop, distributed set-up, checkpoints, objective."""
