"""Optimizers: small optax pieces, chosen by `OptimConfig.optimizer` and driven by a token schedule.

The train step computes the learning rate from counted tokens (`framework.training.schedules`) and builds
the update with it, so an optimizer here is an `Optimizer`: `make(lr)` returns an optax
`GradientTransformation` whose updates are *added* to the parameters (`optax.apply_updates`), and
whose state does not depend on `lr` (`init` builds it with any value). Built inside the jitted
step with a traced `lr`, nothing recompiles as the rate moves.

    adamw          clip -> [grokfast] -> Adam -> decoupled weight decay (matrices) -> -lr
    schedule-free  the same AdamW without momentum, wrapped by `optax.contrib.schedule_free`
                   (Defazio et al. 2024): training runs at the point y; evaluations, checkpoints'
                   weights, averages, ensembles and serving use `eval_params` = the average x
    muon           Newton-Schulz orthogonalized momentum (`optax.contrib.scale_by_muon`) on the
                   blocks' weight matrices, Adam on the embedding and the norms; the matrices'
                   updates are scaled to Adam's RMS (0.2·sqrt(max(fan_in, fan_out)), Liu et al.
                   2025), so one learning rate serves both
    module:attr    a user's own: clip -> [grokfast] -> attr(lr), where attr(learning_rate) returns
                   an optax GradientTransformation whose updates are added to the parameters
                   (optax.adamw, optax.lion, a chain of one's own); its weight decay, betas and
                   state are its own business, the state checkpointed like AdamW's

Adam's b2 can keep its half-life in tokens across batch sizes (Marek et al. 2025): with
`b2_batch` set, a step of `batch` sequences uses b2 ** (batch / b2_batch). Grokfast (Lee et al.
2024) adds `lambda` times an EMA of the gradients (decay `alpha`) to each gradient, amplifying
its slow part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from framework.config import OptimConfig
from framework.errors import ConfigError
from framework.training.registry import OPTIMIZERS

Params = Any


class Optimizer(NamedTuple):
    """`make(lr)`: the transformation at learning rate `lr` (a traced scalar inside the step);
    `eval_params(opt_state, params)`: the weights to evaluate, save and serve."""

    make: Callable[[Any], optax.GradientTransformation]
    eval_params: Callable[[Any, Params], Params]

    def init(self, params: Params):
        return self.make(0.0).init(params)


def _same(opt_state, params: Params) -> Params:
    del opt_state
    return params


def _schedule_free_x(opt_state, params: Params) -> Params:
    return optax.contrib.schedule_free_eval_params(opt_state, params)


class GrokfastState(NamedTuple):
    slow: Params  # EMA of the gradients


def grokfast(alpha: float, lamb: float) -> optax.GradientTransformation:
    """g -> g + lamb * EMA_alpha(g), the EMA started from zeros (Grokfast-EMA, Lee et al. 2024)."""

    def init(params):
        return GrokfastState(jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        del params
        slow = jax.tree.map(lambda s, g: alpha * s + (1.0 - alpha) * g, state.slow, grads)
        return jax.tree.map(lambda g, s: g + lamb * s, grads, slow), GrokfastState(slow)

    return optax.GradientTransformation(init, update)


def effective_b2(o: OptimConfig, batch: int) -> float:
    """Adam's b2 for steps of `batch` sequences: b2 ** (batch / b2_batch) when `b2_batch` is set."""
    return o.b2 if o.b2_batch is None else o.b2 ** (batch / o.b2_batch)


def _matrices(params: Params) -> Params:
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def _muon_labels(params: Params) -> Params:
    """'muon' for the blocks' weight matrices; 'adam' for the embedding (also the output head) and norms."""
    def label(path, x):
        return "muon" if x.ndim == 2 and "embed" not in jax.tree_util.keystr(path) else "adam"

    return jax.tree_util.tree_map_with_path(label, params)


def _adam_rms(updates: Params) -> Params:
    """Scale orthogonalized [fan_in, fan_out] updates to the RMS of an Adam update."""
    return jax.tree.map(lambda u: u * 0.2 * jnp.sqrt(float(max(u.shape))), updates)


def _muon_direction(o: OptimConfig, b2: float) -> optax.GradientTransformation:
    rms = optax.stateless(lambda updates, params=None: _adam_rms(updates))
    # Each matrix as [fan_in, fan_out] (nnx.Linear's kernel layout); a callable, so that the leaves
    # `partition` masks out for Adam are left out here too.
    dims = lambda updates: jax.tree.map(lambda _: optax.contrib.MuonDimensionNumbers(0, 1), updates)  # noqa: E731
    orthogonalized = optax.contrib.scale_by_muon(beta=o.b1, weight_dimension_numbers=dims)
    return optax.partition({"muon": optax.chain(orthogonalized, rms),
                            "adam": optax.scale_by_adam(b1=o.b1, b2=b2)}, _muon_labels)


# OptimConfig.optimizer's names (framework.training.registry.OPTIMIZERS): each takes the config, the
# effective b2, the transformations that come first (clip, Grokfast) and the weight decay.
def adamw(o: OptimConfig, b2: float, head: list, decay) -> Optimizer:
    # optax.adamw's arithmetic, with the rate applied last: `p + (-lr) * u` is bitwise `p - lr * u`.
    return Optimizer(lambda lr: optax.chain(*head, optax.scale_by_adam(b1=o.b1, b2=b2), decay, optax.scale(-lr)),
                     _same)


def muon(o: OptimConfig, b2: float, head: list, decay) -> Optimizer:
    return Optimizer(lambda lr: optax.chain(*head, _muon_direction(o, b2), decay, optax.scale(-lr)), _same)


def schedule_free(o: OptimConfig, b2: float, head: list, decay) -> Optimizer:
    def make(lr):  # the base optimizer's own momentum off, as Defazio et al. prescribe
        base = optax.chain(*head, optax.scale_by_adam(b1=0.0, b2=b2), decay, optax.scale(-lr))
        return optax.contrib.schedule_free(base, learning_rate=lr, b1=o.b1)

    return Optimizer(make, _schedule_free_x)


def users(factory: Callable, head: list) -> Optimizer:
    """A user's `factory(learning_rate) -> GradientTransformation`, after recoup's clip and Grokfast."""
    return Optimizer(lambda lr: optax.chain(*head, factory(lr)), _same)


def check_user(spec: str) -> None:
    """A user's optimizer factory, called once with a rate: a ConfigError unless it gives an optax
    GradientTransformation (before anything is built or compiled)."""
    factory = OPTIMIZERS.resolve(spec)
    try:
        made = factory(1e-3)
    except Exception as e:  # the user's code: its error is the message
        raise ConfigError("optim.optimizer", f"{spec}(learning_rate) failed: {type(e).__name__}: {e}") from None
    if not (callable(getattr(made, "init", None)) and callable(getattr(made, "update", None))):
        raise ConfigError("optim.optimizer", f"{spec}(learning_rate) returned a {type(made).__name__}, not an "
                                             "optax.GradientTransformation (init and update)")


def build(o: OptimConfig, batch: int) -> Optimizer:
    """The optimizer `o` names, for steps of `batch` sequences (b2 depends on it; see `effective_b2`)."""
    head = [optax.clip_by_global_norm(o.clip_norm)]
    if o.grokfast_lambda > 0:
        head.append(grokfast(o.grokfast_alpha, o.grokfast_lambda))
    if o.optimizer not in set(OPTIMIZERS):  # a user's "module:attr"
        return users(OPTIMIZERS.resolve(o.optimizer), head)
    decay = optax.add_decayed_weights(o.weight_decay, mask=_matrices)
    return OPTIMIZERS[o.optimizer](o, effective_b2(o, batch), head, decay)
