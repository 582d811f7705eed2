"""The update step: one jitted function from (params, optimizer state, batch) to their next values.

The learning rate is a function of counted tokens computed inside the step (`tokens_seen` is a
traced scalar), so nothing recompiles as training moves along the schedule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from framework.data.encoding import Batch
from framework.models.transformer import batch_logits
from framework.training import optimizers


def make_train_step(graphdef, optimizer: optimizers.Optimizer, schedule, dropout: bool):
    """One jitted update, compiled once per batch shape. `tokens_seen` is a traced scalar, and so is
    the learning rate the optimizer is built with; `key` is the run's key and `step` the update's index,
    folded into the dropout key when there is dropout."""

    @jax.jit
    def train_step(params, opt_state, batch: Batch, tokens_seen, key, step=0, lr_scale=1.0):
        # This step's dropout key, folded in here rather than on the host: the eager fold-in cost a few
        # ms a step, all of it taken from the cores the step runs on (bit for bit the same key).
        step_key = jax.random.fold_in(key, step) if dropout else None

        def loss_fn(p):
            logits = batch_logits(nnx.merge(graphdef, p), batch, step_key)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets) * batch.loss_mask
            per_example = ce.sum(1) / jnp.maximum(batch.loss_mask.sum(1), 1.0)  # for loss-driven samplers
            return ce.sum() / jnp.maximum(batch.loss_mask.sum(), 1.0), per_example

        (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        lr = schedule(tokens_seen) * lr_scale
        updates, new_opt_state = optimizer.make(lr).update(grads, opt_state, params)
        grad_norm = optax.global_norm(grads)
        # A non-finite loss or gradient never reaches the weights: that step's update is dropped
        # here (no host sync); the loop applies the run's `nonfinite` policy when it reads the flag.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree.map(lambda p, u: keep(p + u, p), params, updates)
        return params, jax.tree.map(keep, new_opt_state, opt_state), {
            "loss": loss, "lr": lr, "grad_norm": grad_norm, "nonfinite": ~finite,
            "example_loss": jax.lax.stop_gradient(per_example)}

    return train_step
