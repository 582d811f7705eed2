"""The names OptimConfig's fields accept, each with the function that builds it (see
`framework.registry`). Imports no jax, so a config's names are checked before jax is loaded."""

from framework.registry import Registry

SCHEDULES = Registry("optim.schedule", "schedule", {
    "cosine": "framework.training.schedules:cosine_from",
    "wsd": "framework.training.schedules:wsd_from",
    "constant": "framework.training.schedules:constant_from",
    "cooldown": "framework.training.schedules:cooldown_from",
})
DECAY_SHAPES = Registry("optim.decay_shape", "decay shape", {
    "linear": "framework.training.schedules:linear_decay",
    "1-sqrt": "framework.training.schedules:one_minus_sqrt_decay",
})
OPTIMIZERS = Registry("optim.optimizer", "optimizer", {
    "adamw": "framework.training.optimizers:adamw",
    "schedule-free": "framework.training.optimizers:schedule_free",
    "muon": "framework.training.optimizers:muon",
}, import_paths=True)  # or a user's factory: learning rate -> optax.GradientTransformation
