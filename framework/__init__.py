"""recoup core: config, data, models, evaluation, checkpoints, stopping, training, the runner,
serving, sweeps and the CLI. Importing it changes nothing in the process (no environment
variables, no logging levels, no listeners)."""

__version__ = "0.1.0"
