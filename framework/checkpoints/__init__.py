"""Checkpoints: the Orbax store with sealed, verified steps, and atomic writes."""
