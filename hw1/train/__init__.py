"""The training machinery every script shares: the one loop, its flags and state, checkpoints, the optimiser and
schedule, precision, stopping, processes and devices, the resumable data path and the metrics."""
