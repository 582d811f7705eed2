"""The runner: one build step from a RunConfig to the plain objects the trainer takes (curricula,
schedules, optimizers, stopping rules, averages looked up by name here and nowhere below), and the
controller that cools a stopped run down and ships its best 1x model."""
