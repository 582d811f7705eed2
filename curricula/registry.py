"""The curricula, pacing functions and scorers by name, each with the import path of its code.

    --curriculum easy-to-hard --pacing root --pacing-arg start=0.2 --pacing-arg ramp=0.5
    --curriculum my_pkg.curricula:shortest_first --curriculum-arg share=0.3
    --pacing my_pkg.pacing:warm --pacing-arg knee=0.4
    --scorer model-loss --scorer-arg run_dir=runs/earlier --scorer-arg step=120 --scorer-percentile

Built-in pacing functions take their ramp as a share of the token budget (`ramp=0.5`: all the
data is open from half-way). A custom pacing function is any importable `f(tokens_seen,
budget_tokens, **args) -> fraction`; a custom curriculum follows the signature in
`curricula.samplers`. Wrong paths, missing attributes and arguments the callable does not take
fail at start-up, naming the field (`curricula.build`). Imports no jax: the run check validates
names with it before jax is loaded.
"""

from framework.registry import Registry

PACINGS = Registry("pacing", "pacing", {
    "constant": "curricula.pacing:constant_share",
    "linear": "curricula.pacing:linear_share",
    "root": "curricula.pacing:root_share",
    "geometric": "curricula.pacing:geometric_share",
    "steps": "curricula.pacing:steps_share",
}, import_paths=True)
CURRICULA = Registry("curriculum", "curriculum", {
    "uniform": "curricula.samplers:uniform",
    "easy-to-hard": "curricula.samplers:easy_to_hard",
    "hard-to-easy": "curricula.samplers:hard_to_easy",
    "seqlen-warmup": "curricula.samplers:seqlen_warmup",
    "self-paced": "curricula.samplers:self_paced",
    "replay-mix": "curricula.samplers:replay_mix",
}, import_paths=True)
SCORERS = Registry("scorer", "scorer", {
    "column": "curricula.scorers:from_column",  # args: name
    "prompt-length": "curricula.scorers:prompt_length",  # args: tokenizer (default byte)
    "answer-length": "curricula.scorers:answer_length",  # args: tokenizer
    "model-loss": "curricula.scorers:model_loss",  # args: run_dir, step
}, import_paths=True)
