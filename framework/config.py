"""Typed run configuration: validated at the boundary, before jax is imported or anything compiles.

Configs are frozen dataclasses with a comment on every field. `RunConfig.validate()` is pure (no
rule code, no files read): it checks types, ranges and how fields fit together, and raises a
`ConfigError` naming the field and the allowed values. Strings that name code (a task, a schedule,
an optimizer, a curriculum, a stopping rule) are checked against the registry that owns them by
`framework.runner.check` (still before jax), and resolved once, by `framework.runner.build`, into
the plain objects the trainer takes (it never branches on a config string). This module imports
neither jax nor datasets, so everything here, including reading a run directory's config.json,
can fail fast.

Units: every budget, stopping point and schedule length is in *counted training tokens*; see
`framework.data.encoding.counted_tokens` for the definition.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from framework.errors import ConfigError

MLPS = ("gated", "gelu")
DEFAULT_STOPS = (0.25, 0.38, 0.5, 0.62, 0.75, 0.88, 1.0)
BATCH_WARMUP_SPLITS = (8, 4, 2)  # steps per drawn batch in each third of RunConfig.batch_warmup
# Bounds past any run that could fit in memory: an absurd value (1e9 typed for 1e3) fails here, naming
# its field, instead of hanging in data generation or overflowing inside jax.
MAX_WIDTH = 2**20  # d_model, d_ff: one d_model x d_model matrix is already 4 TB in float32
MAX_LAYERS = 2**12
MAX_KB_ENTITIES = 100_000  # the name generator runs dry at about 1.7M, slowing down well before
MAX_INT = 2**63  # seeds: jax.random.key takes a signed 64-bit integer


@dataclasses.dataclass(frozen=True)
class DataConfig:
    task: str | None = "addition"  # built-in task (framework.data.registry.TASKS); None with data_path or text
    data_path: str | None = None  # a local .jsonl/.csv/.parquet file or a save_to_disk directory
    prompt_col: str = "prompt"  # data_path: the prompt column
    answer_col: str = "answer"  # data_path: the answer column
    difficulty_col: str | None = None  # optional; rows are "unscored" (difficulty 0) without it
    max_digits: int = 5  # addition: operands have 1..max_digits digits
    operand_format: str = "lsb-first"  # addition: lsb-first "75000" | padded "00057" | natural "57"
    max_hops: int = 3  # multihop: questions of 1..max_hops hops
    kb_entities: int = 100  # multihop: invented names in the knowledge base
    kb_relations: int = 4  # multihop: relations, each a function from entity to entity (1..12)
    hop_answer: str = "chain"  # multihop: "chain" "Kesu, Tomer" (every hop) | "final" "Tomer"
    n_examples: int = 30_000  # addition: problems generated; multihop: multi-hop compositions
    val_size: int = 500  # held-out prompts for validation EM at stopping points (text: documents, for loss)
    test_size: int = 2_000  # held-out prompts (text: documents), never used for any choice
    seed: int = 0  # data seed; fixed across training seeds so test sets stay comparable
    split_by: str = "hash"  # data_path: "hash" (by prompt and seed: added rows move no prompt) | "shuffle" (old)
    # split_by "hash": the hashes below which a prompt is test, then validation; None: cut at test_size and
    # val_size prompts at a run's first build (RUN/data.json keeps them for its later builds)
    split_cuts: tuple[int, int] | None = None
    max_seq_len: int = 1024  # longest `BOS prompt answer EOS` allowed (attention cost is quadratic)
    tokenizer: str = "byte"  # "byte", or a Hugging Face tokenizer.json / a directory holding one
    # a text corpus instead of prompt/answer data: a .txt, .jsonl or .parquet file, a directory of one kind, or a
    # datasets save_to_disk directory, streamed in order and packed into rows of seq_len tokens with the loss on
    # every token (framework.data.text); its first val_size documents are validation, the next test_size test,
    # and training reads the documents after them, so the splits never overlap
    text: str | None = None
    text_col: str = "text"  # text: the column holding each document (.jsonl, .parquet, save_to_disk)
    seq_len: int | None = None  # text or pack: tokens per packed row, at most max_seq_len (required with either)
    # prompt/answer data: pack whole examples into rows of seq_len tokens, as many as fit (attention and positions
    # kept per example), in a seeded shuffle; the loss stays on the answers (framework.data.packing)
    pack: bool = False
    # other sources mixed into the training rows, ((path, share), ...): a text corpus (PATH, read from its start,
    # nothing of it held out), or prompt/answer examples (qa:FILE, a file --data reads, with the run's prompt/answer
    # columns: only its train split, packed whole as pack packs them); each row comes from one of them with
    # probability its share, else from the main data, which must be packed (text, or pack); validation is the main
    # data's (framework.data.mixture)
    mixture: tuple = ()

    def validate(self) -> None:
        given = [f"data.{f}" for f in ("task", "data_path", "text") if getattr(self, f) is not None]
        if len(given) != 1 and self.text is None:
            raise ConfigError("task", "give exactly one of a built-in task or a data file")
        if len(given) != 1:
            raise ConfigError("data.text", f"give exactly one of data.task, data.data_path and data.text, not "
                                           f"{' and '.join(given)} (in Python: DataConfig(task=None, text=...))")
        _text("data.text", self.text, optional=True)
        _text("data.text_col", self.text_col)
        if not isinstance(self.pack, bool):
            raise ConfigError("data.pack", f"{self.pack!r} must be true or false")
        if self.pack and self.text is not None:
            raise ConfigError("data.pack", "packs prompt/answer examples (data.task, data.data_path); a text corpus "
                                           "(data.text) is always packed")
        if (self.text is not None or self.pack) and self.seq_len is None:
            raise ConfigError(f"data.{'text' if self.text else 'pack'}", "needs data.seq_len, the tokens of one "
                                                                         "packed row (--seq-len 512)")
        m = self.mixture
        if not (isinstance(m, tuple) and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and x[0]
                                             and _is_number(x[1]) and 0 < x[1] < 1 for x in m)):
            raise ConfigError("data.mixture", f"{m!r} must be (path, share) pairs, each share in (0, 1) (--mix "
                                              "PATH=SHARE, or qa:FILE=SHARE for prompt/answer examples)")
        empty = [x[0] for x in m if x[0].startswith(QA_PREFIX) and not qa_source(x[0])]
        if empty:
            raise ConfigError("data.mixture", f"{empty[0]!r} names no file: prompt/answer examples are qa:FILE=SHARE "
                                              "(--mix qa:train.jsonl=0.2)")
        if m and sum(x[1] for x in m) >= 1:
            raise ConfigError("data.mixture", f"its shares add up to {sum(x[1] for x in m):g}: the main data's share "
                                              "is what they leave, so they must add up to less than 1")
        if m and self.text is None and not self.pack:
            raise ConfigError("data.mixture", "mixes packed rows: the main data must be a text corpus (data.text) or "
                                              "packed examples (data.pack)")
        if self.seq_len is not None:
            if self.text is None and not self.pack:
                raise ConfigError("data.seq_len", "applies only to a text corpus (data.text) or packed examples "
                                                  "(data.pack)")
            if not isinstance(self.seq_len, int) or isinstance(self.seq_len, bool) or self.seq_len < 2:
                raise ConfigError("data.seq_len", f"{self.seq_len!r} must be an integer >= 2 (tokens per row)")
        _text("data.data_path", self.data_path, optional=True)
        _text("data.prompt_col", self.prompt_col)
        _text("data.answer_col", self.answer_col)
        _text("data.difficulty_col", self.difficulty_col, optional=True)
        _text("data.tokenizer", self.tokenizer)
        if isinstance(self.kb_entities, int) and self.kb_entities < 2:
            raise ConfigError("data.kb_entities", f"{self.kb_entities} must be >= 2")
        for name in ("max_digits", "max_hops", "n_examples", "val_size", "test_size", "max_seq_len",
                     "kb_entities", "kb_relations"):
            _positive_int(f"data.{name}", getattr(self, name))
        _nonnegative_int("data.seed", self.seed)
        if self.seq_len is not None and self.seq_len > self.max_seq_len:
            raise ConfigError("data.seq_len", f"{self.seq_len} is over data.max_seq_len {self.max_seq_len}, the "
                                              "longest sequence the model trains and serves at: lower --seq-len or "
                                              "raise --max-seq-len")
        if self.split_by not in SPLIT_BY:
            raise ConfigError("data.split_by", f"unknown way to split {self.split_by!r}", SPLIT_BY)
        c = self.split_cuts
        if c is not None and not (isinstance(c, tuple) and len(c) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 2**64 for x in c) and c[0] <= c[1]):
            raise ConfigError("data.split_cuts", f"{c!r} must be two hash values (test, validation), "
                                                 "0 <= test <= validation <= 2**64, or null")
        if self.kb_entities > MAX_KB_ENTITIES:
            raise ConfigError("data.kb_entities", f"{self.kb_entities} is more than the {MAX_KB_ENTITIES:,} names "
                                                  "the knowledge base can invent")
        # Against max_seq_len, the shortest example of the hardest level: an absurd max_digits or max_hops
        # would otherwise spend minutes generating examples that the length check then rejects.
        if self.task == "addition" and 2 * self.max_digits + 5 > self.max_seq_len:  # "A+B=", the sum, BOS, EOS
            raise ConfigError("data.max_digits", f"{self.max_digits}-digit problems take at least "
                                                 f"{2 * self.max_digits + 5} tokens; max_seq_len is {self.max_seq_len}")
        if self.task == "multihop" and 12 * self.max_hops > self.max_seq_len:  # each hop adds >= " of the boss"
            raise ConfigError("data.max_hops", f"{self.max_hops}-hop questions take at least {12 * self.max_hops} "
                                               f"tokens; max_seq_len is {self.max_seq_len}")


DTYPES = ("float32", "bfloat16")
SPLIT_BY = ("hash", "shuffle")
NONFINITE_POLICIES = ("stop", "skip", "rollback")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    d_model: int = 128  # residual width
    n_layers: int = 3  # transformer blocks
    n_heads: int = 4  # attention heads; d_model must divide evenly
    d_ff: int = 384  # MLP hidden width
    mlp: str = "gated"  # "gated" (SwiGLU) or "gelu"
    dropout: float = 0.0  # residual dropout during training
    rope_base: float = 10_000.0  # RoPE frequency base
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16" (parameters and softmax stay float32)
    factory: str | None = None  # "module:attr": your own nnx model, attr(vocab_size, rngs)
    # a Hugging Face checkpoint directory: the model is the Llama-family model its config.json describes
    # (the shape fields above do not apply); `--init-from hf:DIR` sets it
    hf_config: str | None = None

    def validate(self) -> None:
        _text("model.hf_config", self.hf_config, optional=True)
        if self.factory is not None and self.hf_config is not None:
            raise ConfigError("model.hf_config", "a model is your own factory's or a Hugging Face config's, not both")
        if self.factory is not None and (not isinstance(self.factory, str) or self.factory.count(":") != 1
                                         or not all(self.factory.split(":"))):
            raise ConfigError("model.factory", f"{self.factory!r} must be an import path 'module:attr' "
                                               "(a function of vocab_size and rngs that returns an nnx.Module)")
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            _positive_int(f"model.{name}", getattr(self, name))
        for name, most in (("d_model", MAX_WIDTH), ("d_ff", MAX_WIDTH), ("n_layers", MAX_LAYERS)):
            if getattr(self, name) > most:
                raise ConfigError(f"model.{name}", f"{getattr(self, name)} is over {most:,}: no such model fits")
        _positive("model.rope_base", self.rope_base)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(
                "model.n_heads", f"d_model {self.d_model} / n_heads {self.n_heads} must be an even integer"
            )
        if self.mlp not in MLPS:
            raise ConfigError("model.mlp", f"unknown MLP {self.mlp!r}", MLPS)
        if self.dtype not in DTYPES:
            raise ConfigError("model.dtype", f"unknown compute dtype {self.dtype!r}", DTYPES)
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout", f"{self.dropout} is outside [0, 1)")


PRESETS = {
    "tiny": ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64),  # tests: compiles in seconds
    "small": ModelConfig(d_model=128, n_layers=3, n_heads=4, d_ff=384),  # demo: ~0.6M parameters
    # GPU benchmarks: ~106M parameters in bfloat16
    "base": ModelConfig(d_model=768, n_layers=15, n_heads=12, d_ff=2048, dtype="bfloat16"),
    # long sequences, one model at 1k, 2k or 4k tokens (PRESET_RUN): ~27M parameters in bfloat16, heads
    # of 64, which cuDNN's flash attention takes on a GPU (framework/models/attention.py)
    **dict.fromkeys(("long-1k", "long-2k", "long-4k"),
                    ModelConfig(d_model=512, n_layers=8, n_heads=8, d_ff=1536, dtype="bfloat16")),
}
# What a preset sets besides the model ("section.field" or a run field); `--preset` applies it under any
# flag given. The long presets: the longest example, and batches sized to it. Training keeps 32k token
# slots a step; evaluation ~1 GiB of float32 scores per layer where XLA's attention runs ([eval_batch_size,
# 8 heads, t, t]: a CPU, or float32), while cuDNN's flash attention keeps none.
PRESET_RUN = {
    "long-1k": {"data.max_seq_len": 1024, "batch_size": 32, "eval_batch_size": 32},
    "long-2k": {"data.max_seq_len": 2048, "batch_size": 16, "eval_batch_size": 8},
    "long-4k": {"data.max_seq_len": 4096, "batch_size": 8, "eval_batch_size": 2},
}


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    schedule: str = "cosine"  # learning-rate shape over the token budget
    peak_lr: float = 3e-3  # AdamW peak learning rate
    warmup_frac: float = 0.05  # share of the budget spent warming up linearly from 0
    decay_frac: float = 0.2  # wsd only: share of the budget spent decaying linearly to 0
    end_lr_frac: float = 0.0  # cosine only: final learning rate as a share of the peak
    decay_start: int = 0  # cooldown only: counted tokens where the decay from peak_lr to 0 begins
    decay_shape: str = "linear"  # wsd's and a cooldown's decay to 0
    weight_decay: float = 0.1  # decoupled weight decay on matrices (not norms or biases)
    clip_norm: float = 1.0  # global gradient-norm clip
    b1: float = 0.9  # Adam's first moment; schedule-free's interpolation; Muon's momentum
    b2: float = 0.98  # Adam's second moment (see b2_batch)
    # b2 was chosen for this batch size: a step of B sequences uses b2 ** (B / b2_batch), which keeps
    # Adam's second-moment half-life in tokens (Marek et al. 2025). None: b2 as given at any batch.
    b2_batch: int | None = None
    # "adamw"; "schedule-free" (AdamW without a schedule's decay: evaluate and save its averaged
    # weights; pair it with schedule "constant"); "muon" (orthogonalized updates on the weight
    # matrices, AdamW on the rest); or "module:attr", your own optax optimizer: attr(learning_rate)
    # -> GradientTransformation, as optax.adamw. See framework.training.optimizers.
    optimizer: str = "adamw"
    grokfast_lambda: float = 0.0  # Grokfast: each gradient g += lambda * EMA(g); 0: off
    grokfast_alpha: float = 0.98  # Grokfast: the gradient EMA's decay per step

    def validate(self) -> None:
        _nonnegative_int("optim.decay_start", self.decay_start)  # only cooldown reads it, but check it always
        _positive("optim.peak_lr", self.peak_lr)
        _positive("optim.clip_norm", self.clip_norm)
        for name in ("warmup_frac", "decay_frac", "end_lr_frac"):
            if not _is_number(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"optim.{name}", f"{getattr(self, name)} is outside [0, 1]")
        if self.schedule == "wsd" and self.warmup_frac + self.decay_frac > 1.0:
            raise ConfigError("optim.decay_frac", "warmup_frac + decay_frac must be <= 1 for wsd")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError("optim.weight_decay", f"{self.weight_decay} must be a number >= 0")
        for name in ("b1", "b2", "grokfast_alpha"):
            if not _is_number(getattr(self, name)) or not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optim.{name}", f"{getattr(self, name)} is outside [0, 1)")
        if self.optimizer == "schedule-free" and not self.b1 > 0:
            raise ConfigError("optim.b1", "schedule-free needs b1 > 0 (it interpolates with weight b1; 0.9 to 0.98)")
        if self.b2_batch is not None:
            _positive_int("optim.b2_batch", self.b2_batch)
        if not _is_number(self.grokfast_lambda) or self.grokfast_lambda < 0:
            raise ConfigError("optim.grokfast_lambda", f"{self.grokfast_lambda!r} must be a number >= 0 (0: off)")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out_dir: str  # run directory: config.json, metrics.jsonl, checkpoints/
    budget_tokens: int  # planned training budget in counted tokens (2000000, 2M, 500k)
    data: DataConfig = DataConfig()  # what is trained on
    model: ModelConfig = PRESETS["small"]  # what is trained
    optim: OptimConfig = OptimConfig()  # how
    preset: str | None = "small"  # name of the model preset, recorded for humans
    batch_size: int = 128  # sequences per training step
    # Grow the batch over this share of the budget: each drawn batch is split into 8 steps of
    # batch_size/8 sequences in the first third, 4 in the second, 2 in the last, then whole (the
    # critical batch size starts small and grows). 0: off. Tokens and the data order are unchanged.
    batch_warmup: float = 0.0
    stops: tuple[float, ...] = DEFAULT_STOPS  # stopping points as fractions of budget_tokens
    train_until: float = 1.0  # end training at this budget fraction; the schedule still plans for budget_tokens
    every_tokens: int | None = None  # also checkpoint every this many tokens (None: off)
    # after each save, delete the checkpoints that are neither stopping points, nor the newest keep_latest, nor
    # the keep_best best by validation EM (framework.checkpoints.retention); None ("all" as a flag): keep them all
    keep_latest: int | None = None
    # with keep_latest: also keep this many checkpoints of highest validation EM (a text run: lowest loss); 0: none
    keep_best: int = 1
    seed: int = 0  # training seed: initialization, data order, dropout
    eval_batch_size: int = 256  # sequences per evaluation forward pass
    log_every: int = 25  # steps between metrics.jsonl lines (each forces one device sync)
    # write the metrics.jsonl curves (loss, learning rate, gradient norm, tokens/s, val EM and loss) as
    # TensorBoard event files in RUN/tensorboard/, against counted tokens, for `tensorboard --logdir runs/`
    tensorboard: bool = True
    # start from the weights of RUN_DIR (its newest checkpoint), RUN_DIR/checkpoints/STEP, or hf:DIR (a Hugging
    # Face checkpoint directory: its architecture, weights and, unless --tokenizer says otherwise, tokenizer)
    init_from: str | None = None
    curriculum: str = "uniform"  # which examples batches draw (curricula.registry), or a "module:attr" of your own
    curriculum_args: dict = dataclasses.field(default_factory=dict)  # keyword arguments of the curriculum
    pacing: str = "constant"  # tokens -> share of the data open (curricula.registry), or a "module:attr"
    # keyword arguments of the pacing, e.g. {"start": 0.2, "ramp": 0.5} (--pacing-arg start=0.2)
    pacing_args: dict = dataclasses.field(default_factory=dict)
    # rescore the train split's difficulty (curricula.registry), or a "module:attr"; None: keep the data's
    scorer: str | None = None
    # keyword arguments of the scorer, e.g. {"run_dir": "runs/a", "step": 120} (--scorer-arg step=120)
    scorer_args: dict = dataclasses.field(default_factory=dict)
    scorer_percentile: bool = False  # store the scores as percentiles in (0, 1] instead of raw
    ema_half_lives: tuple[int, ...] = ()  # keep an EMA of the weights per half-life in counted tokens
    swa_start: float | None = None  # keep a running mean of the weights from this budget fraction on
    # rules that may end the run early (framework.stopping.rules), e.g. ({"rule": "patience", "patience": 3},)
    stop_rules: tuple = ()
    stop_combine: str = "any"  # stop when "any" rule fires, or only when "all" fire at one evaluation
    branch_from: str | None = None  # RUN_DIR/checkpoints/STEP: start from its full training state (cooldown)
    # (data, fsdp) devices of the training mesh; -1: every device the fsdp axis leaves. Not part of
    # what a run is: a run may resume on another device count (framework.training.sharding).
    mesh_shape: tuple[int, int] = (-1, 1)
    # A non-finite loss or gradient: its update is always dropped; then "stop" (a stopped checkpoint
    # saying where), "skip" (go on, counted in metrics.jsonl) or "rollback" (reload the newest
    # checkpoint, learning rate x rollback_lr_factor, at most max_rollbacks times, then stop).
    # Read at each log line (every log_every steps), so acting costs no per-step host sync.
    nonfinite: str = "stop"
    rollback_lr_factor: float = 0.5  # rollback: the learning rate is multiplied by this each time
    max_rollbacks: int = 3  # rollback: at most this many, then stop

    def validate(self) -> None:
        """Raise ConfigError on the first invalid field. Pure Python: safe before jax."""
        for name, cls in (("data", DataConfig), ("model", ModelConfig), ("optim", OptimConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(name, f"{getattr(self, name)!r} must be a {cls.__name__}")
        self.data.validate()
        self.model.validate()
        self.optim.validate()
        if not self.out_dir:
            raise ConfigError("out_dir", "a run directory is required")
        _text("out_dir", self.out_dir)
        _text("preset", self.preset, optional=True)
        if self.preset is not None:  # a label that names the model it stands for, not another one
            named = preset(self.preset)
            differ = [n for n in SHAPE_FIELDS if getattr(self.model, n) != getattr(named, n)]
            if differ:
                shown = ", ".join(f"{n}={getattr(self.model, n)!r}" for n in differ)
                raise ConfigError("preset", f"preset {self.preset!r} is not the model given ({shown}): pass "
                                            f"model=preset({self.preset!r}), or preset=None for a model of your own")
        _text("init_from", self.init_from, optional=True)
        _text("branch_from", self.branch_from, optional=True)
        if hf_source(self.init_from) is not None:
            if self.model.hf_config is None or os.path.abspath(self.model.hf_config) != hf_source(self.init_from):
                raise ConfigError("init_from", f"{self.init_from} needs model.hf_config={self.init_from[3:]!r} "
                                               f"(the model its weights fit; `recoup train --init-from` sets it)")
            if self.data.tokenizer == "byte":
                raise ConfigError("data.tokenizer", f"{self.init_from}'s embeddings are for its own tokenizer, not "
                                                    f"the byte tokenizer: give --tokenizer {self.init_from[3:]} (or "
                                                    "its tokenizer.json)")
        _positive_int("budget_tokens", self.budget_tokens)
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_batch_size", self.eval_batch_size)
        _positive_int("log_every", self.log_every)
        _nonnegative_int("seed", self.seed)
        for field in ("stops", "ema_half_lives", "stop_rules"):
            if not isinstance(getattr(self, field), tuple | list):
                raise ConfigError(field, f"{getattr(self, field)!r} must be a list")
        if not self.stops:
            raise ConfigError("stops", "give at least one stopping fraction in (0, 1]")
        for f in self.stops:
            if not (_is_number(f) and 0.0 < f <= 1.0):
                raise ConfigError("stops", f"fraction {f!r} is outside (0, 1]")
        if not (_is_number(self.batch_warmup) and 0.0 <= self.batch_warmup < 1.0):
            raise ConfigError("batch_warmup", f"{self.batch_warmup!r} must be a budget fraction in [0, 1) (0: off)")
        if self.batch_warmup > 0 and self.batch_size % BATCH_WARMUP_SPLITS[0]:
            k = BATCH_WARMUP_SPLITS[0]
            raise ConfigError("batch_warmup", f"batch_size {self.batch_size} must be a multiple of {k} "
                                              f"to start at batch_size/{k}")
        if not (_is_number(self.train_until) and 0.0 < self.train_until <= 1.0):
            raise ConfigError("train_until", f"{self.train_until!r} must be a budget fraction in (0, 1]")
        if self.every_tokens is not None:
            _positive_int("every_tokens", self.every_tokens)
            if self.every_tokens > self.budget_tokens:
                raise ConfigError("every_tokens", f"{self.every_tokens:,} is more than budget_tokens "
                                                  f"{self.budget_tokens:,}: no periodic checkpoint would be saved")
        keep = self.keep_latest
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ConfigError("keep_latest", f"{keep!r} must be an integer >= 1 (the newest checkpoint, where a resume "
                                             "starts, always stays), or null to keep every checkpoint")
        _nonnegative_int("keep_best", self.keep_best)
        if keep is None and self.keep_best != 1:
            raise ConfigError("keep_best", "applies only with keep_latest (without it every checkpoint is kept)")
        for field in ("curriculum_args", "pacing_args", "scorer_args"):
            args = getattr(self, field)
            if not (isinstance(args, dict) and all(isinstance(k, str) for k in args)):
                raise ConfigError(field, f"{args!r} must be a mapping of keyword arguments")
        if not isinstance(self.tensorboard, bool):
            raise ConfigError("tensorboard", f"{self.tensorboard!r} must be true or false")
        if not isinstance(self.scorer_percentile, bool):
            raise ConfigError("scorer_percentile", f"{self.scorer_percentile!r} must be true or false")
        for h in self.ema_half_lives:
            _positive_int("ema_half_lives", h)
            if h > self.budget_tokens:
                raise ConfigError("ema_half_lives", f"half-life {h:,} is more than budget_tokens "
                                                    f"{self.budget_tokens:,}: that average would still be mostly "
                                                    "its first steps at the end")
        if len(set(self.ema_half_lives)) != len(self.ema_half_lives):
            raise ConfigError("ema_half_lives", f"{list(self.ema_half_lives)} repeats a half-life")
        if self.swa_start is not None and not (_is_number(self.swa_start) and 0.0 <= self.swa_start < 1.0):
            raise ConfigError("swa_start", f"{self.swa_start!r} must be a budget fraction in [0, 1)")
        if self.optim.schedule == "cooldown" and not (
                isinstance(self.optim.decay_start, int) and 0 <= self.optim.decay_start < self.budget_tokens):
            raise ConfigError("optim.decay_start", f"{self.optim.decay_start!r} must be a token count in "
                                                   f"[0, budget_tokens={self.budget_tokens})")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ConfigError("nonfinite", f"unknown policy {self.nonfinite!r}", NONFINITE_POLICIES)
        if not (_is_number(self.rollback_lr_factor) and 0.0 < self.rollback_lr_factor < 1.0):
            raise ConfigError("rollback_lr_factor", f"{self.rollback_lr_factor!r} must be in (0, 1)")
        _positive_int("max_rollbacks", self.max_rollbacks)
        m = self.mesh_shape
        if not (isinstance(m, tuple) and len(m) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in m)
                and (m[0] == -1 or m[0] >= 1) and m[1] >= 1):
            raise ConfigError("mesh_shape", f"{m!r} must be (data, fsdp) device counts: data >= 1 or -1 "
                                            "(every device left), fsdp >= 1")

    # -- serialization: config.json in every run directory ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        data = dict(d.get("data", {}))
        if data.get("data_path"):  # a file split before splits by hash: its splits stay the ones it had (a
            data.setdefault("split_by", "shuffle")  # built-in task ignores the field: it reads as the default)
        if isinstance(data.get("split_cuts"), list):
            data["split_cuts"] = tuple(data["split_cuts"])
        if isinstance(data.get("mixture"), list):  # JSON's lists, back to the (path, share) pairs a config holds
            data["mixture"] = tuple(tuple(x) if isinstance(x, list) else x for x in data["mixture"])
        d["data"] = _from_fields(DataConfig, data, "data")
        d["model"] = _from_fields(ModelConfig, d.get("model", {}), "model")
        d["optim"] = _from_fields(OptimConfig, d.get("optim", {}), "optim")
        d["stops"] = tuple(d.get("stops", DEFAULT_STOPS))
        d["ema_half_lives"] = tuple(d.get("ema_half_lives", ()))
        d["stop_rules"] = tuple(d.get("stop_rules", ()))
        d["mesh_shape"] = tuple(d.get("mesh_shape", (-1, 1)))
        return _from_fields(cls, d, "config")

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def preset(name: str) -> ModelConfig:
    """The ModelConfig of a named preset; unknown names list the known ones."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}", PRESETS)
    return PRESETS[name]


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(field: str, value) -> None:
    if not _is_number(value) or not value > 0:
        raise ConfigError(field, f"{value!r} must be a number > 0")


def _positive_int(field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(field, f"{value!r} must be a positive integer")


def _nonnegative_int(field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_INT:
        raise ConfigError(field, f"{value!r} must be an integer >= 0 (and < 2**63)")


def _text(field: str, value, optional: bool = False) -> None:
    if not (isinstance(value, str) and value) and not (optional and value is None):
        raise ConfigError(field, f"{value!r} must be a non-empty string" + (" or null" if optional else ""))


SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "d_ff", "mlp", "factory", "hf_config")  # what shapes depend on


HF_PREFIX = "hf:"  # init_from "hf:DIR": start from a Hugging Face checkpoint directory's weights


def hf_source(init_from: str | None) -> str | None:
    """The absolute checkpoint directory of an `init_from` of "hf:DIR"; None for any other."""
    if isinstance(init_from, str) and init_from.startswith(HF_PREFIX) and init_from[len(HF_PREFIX):]:
        return os.path.abspath(init_from[len(HF_PREFIX):])
    return None


QA_PREFIX = "qa:"  # a mixture entry "qa:FILE": prompt/answer examples (a file --data reads), not a text corpus


def qa_source(path: str) -> str | None:
    """The file of a mixture entry "qa:FILE" (DataConfig.mixture): prompt/answer examples; None for a text corpus
    (and for "qa:" alone, which DataConfig.validate refuses)."""
    return (path[len(QA_PREFIX):] or None) if path.startswith(QA_PREFIX) else None


def _from_fields(cls, d: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(d) - names):
        raise ConfigError(f"{where}.{unknown[0]}" if unknown[0] else where, f"unknown field {unknown[0]!r}",
                          sorted(names))
    return cls(**d)
