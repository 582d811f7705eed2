"""Training: the train loop, optimizers, schedules, sharding, cooldowns, recipes, the controller,
and reading run directories."""
