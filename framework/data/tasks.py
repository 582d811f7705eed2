"""Tasks: the built-in synthetic data sets and train/validation/test splits (of them, or of a
user's file: framework.data.files).

Every data set is a `datasets.Dataset` with columns `prompt` (str), `answer` (str) and
`difficulty` (int64 for built-in tasks; for files, the user's numeric column). Generation is a
pure function of `seed` (a local `random.Random`, never the global RNG) and builds the data set
with `Dataset.from_dict`, in memory: nothing is cached on disk or downloaded. No jax here, so the
CLI can check a config and its data before jax starts.

    splits = build_splits(DataConfig(task="addition", seed=0, n_examples=10_000, val_size=500,
                                     test_size=500, max_digits=5))
    splits["train"][0]  # {'prompt': '40000+09870=', 'answer': '4987', 'difficulty': 4} (4 + 7890)
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import datasets

from framework.config import DataConfig
from framework.data.files import COLUMNS, Row, column, load_file, to_dataset
from framework.data.registry import HOP_ANSWERS, OPERAND_FORMATS, RELATIONS, SPLITS, TASKS
from framework.errors import ConfigError


def _rows(ds: datasets.Dataset) -> list[Row]:
    return list(zip(*(column(ds, c) for c in COLUMNS), strict=True))


def _check_count(field: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(field, f"must be >= {minimum}, got {value}")


def _sample_unique(rng: random.Random, n_examples: int, pool_sizes: Mapping[int, int],
                   draw: Callable[[int], tuple[str, str]]) -> list[Row]:
    """Draws up to `n_examples` rows with distinct prompts and a uniform difficulty per row.

    `pool_sizes[d]` counts the distinct prompts of difficulty d exactly; once all are drawn, d
    leaves the draw, so a small pool (1-digit sums) never loops forever. The attempt cap is a
    second guard that real settings do not reach.
    """
    open_levels, counts, seen, rows = sorted(pool_sizes), dict.fromkeys(pool_sizes, 0), set(), []
    for _ in range(100 * n_examples + 10_000):
        if len(rows) >= n_examples or not open_levels:
            break
        level = rng.choice(open_levels)
        prompt, answer = draw(level)
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append((prompt, answer, level))
        counts[level] += 1
        if counts[level] == pool_sizes[level]:
            open_levels.remove(level)
    return rows


# ---------------------------------------------------------------- addition

def reverse_digits(s: str) -> str:
    """Reverses a digit string: `reverse_digits("125") == "521"`."""
    return s[::-1]


def decode_addition_answer(answer: str) -> int:
    """Reads an addition answer back as an int: "521" -> 125, "001" -> 100.

    Args:
      answer: ASCII digits, least significant first; surrounding whitespace is ignored.

    Returns:
      The integer. Raises ValueError if `answer` is not a non-empty string of digits.
    """
    text = answer.strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"not an addition answer (digits, least significant first): {answer!r}")
    return int(reverse_digits(text))


# How an operand is written, given the task's max_digits. The answer is always LSB-first.
# DataConfig.operand_format's names: framework.data.registry.OPERAND_FORMATS.
def lsb_first(x: int, width: int) -> str:
    return reverse_digits(f"{x:0{width}d}")  # 57 -> "75000"


def padded(x: int, width: int) -> str:
    return f"{x:0{width}d}"  # 57 -> "00057"


def natural(x: int, width: int) -> str:
    return str(x)  # 57 -> "57"


def _operand(rng: random.Random, digits: int) -> int:
    # Exactly `digits` digits with no leading zero; one digit includes 0.
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10**digits - 1)


def _addition_pool(d: int) -> int:
    """Number of ordered pairs whose longer operand has exactly d digits."""
    n_long = 10 if d == 1 else 9 * 10 ** (d - 1)
    n_shorter = 0 if d == 1 else 10 ** (d - 1)  # every number with fewer than d digits
    return n_long * n_long + 2 * n_long * n_shorter


def addition(n_examples: int, max_digits: int, seed: int, operand_format: str = "lsb-first") -> datasets.Dataset:
    """Integer addition, `"75000+86000="` (57 + 68) -> `"521"`, with unique prompts.

    The answer is the sum with its digits reversed (least significant first): the model then
    writes digits in the order the carry flows, which small transformers learn far more easily
    (Lee et al. 2023, "Teaching arithmetic to small transformers"); `decode_addition_answer`
    reads it back. How operands are written is `operand_format` (see OPERAND_FORMATS): by
    default also least significant digit first and zero-padded to `max_digits`, so digit i of
    each operand and of the answer sit at fixed distances from one another, which relative (RoPE)
    attention picks up quickly; measured for the demo, see README. The difficulty d is uniform
    in 1..max_digits: one operand has exactly d digits, the other a uniform length in 1..d, in
    random order.

    Args:
      n_examples: rows wanted; fewer only when the distinct problems run out (100 with one digit).
      max_digits: the longest operand, >= 1.
      seed: the generator seed.
      operand_format: a key of OPERAND_FORMATS.

    Returns:
      A Dataset with columns prompt, answer, difficulty (= digits of the longer operand).
    """
    _check_count("n_examples", n_examples, 0)
    _check_count("max_digits", max_digits, 1)
    if operand_format not in OPERAND_FORMATS:
        raise ConfigError("operand_format", f"unknown format '{operand_format}'", allowed=OPERAND_FORMATS)
    rng = random.Random(seed)

    def draw(d: int) -> tuple[str, str]:
        long, short = _operand(rng, d), _operand(rng, rng.randint(1, d))
        a, b = (long, short) if rng.random() < 0.5 else (short, long)
        fmt = OPERAND_FORMATS[operand_format]
        return f"{fmt(a, max_digits)}+{fmt(b, max_digits)}=", reverse_digits(str(a + b))

    pools = {d: _addition_pool(d) for d in range(1, max_digits + 1)}
    return to_dataset(_sample_unique(rng, n_examples, pools, draw))


# ---------------------------------------------------------------- multi-hop questions

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")  # most names end in a vowel ("Kesu"), some not ("Tomer")


@dataclass(frozen=True)
class KnowledgeBase:
    """A synthetic world: each relation sends each entity to exactly one other entity."""

    entities: tuple[str, ...]
    relations: tuple[str, ...]
    links: dict[str, dict[str, str]]  # links[relation][entity] -> target entity

    def path(self, chain: tuple[str, ...], start: str) -> list[str]:
        """Every entity met following `chain` as English reads it, innermost relation first:
        ("teacher", "friend") from Alba is [friend(Alba), teacher(friend(Alba))]."""
        out, entity = [], start
        for relation in reversed(chain):
            entity = self.links[relation][entity]
            out.append(entity)
        return out

    def resolve(self, chain: tuple[str, ...], start: str) -> str:
        """The answer: ("teacher", "friend") is teacher(friend(start))."""
        return self.path(chain, start)[-1]


# How a multi-hop answer is written: the whole chain of entities ("Kesu, Tomer": friend(Alba), then
# its teacher), or only the final one ("Tomer"). The chain is what a small model learns at a modest
# budget: every hop is a fact it is trained to recall, in the order it has to compose them.
# DataConfig.hop_answer's names: framework.data.registry.HOP_ANSWERS.
def whole_chain(path: list[str]) -> str:
    return ", ".join(path)


def final_entity(path: list[str]) -> str:
    return path[-1]


def question(chain: tuple[str, ...], start: str) -> str:
    """`question(("teacher", "friend"), "Alba") == "Who is the teacher of the friend of Alba?"`."""
    return f"Who is the {' of the '.join(chain)} of {start}?"


def knowledge_base(seed: int, n_entities: int = 100, n_relations: int = 4) -> KnowledgeBase:
    """Generates the knowledge base that `multihop(..., seed, n_entities, n_relations)` asks about.

    Args:
      seed: the generator seed.
      n_entities: distinct pronounceable names (2-3 syllables, capitalized), >= 2.
      n_relations: the first n of `RELATIONS` (the same names for every seed).

    Returns:
      A KnowledgeBase; each relation sends each entity to a random entity other than itself.
    """
    _check_count("n_entities", n_entities, 2)
    if not 1 <= n_relations <= len(RELATIONS):
        raise ConfigError("n_relations", f"must be in 1..{len(RELATIONS)} (the relation names "
                                         f"there are), got {n_relations}")
    rng = random.Random(seed)
    names: dict[str, None] = {}  # an insertion-ordered set keeps the entity order reproducible
    for _ in range(100 * n_entities):
        if len(names) == n_entities:
            break
        syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3))]
        names["".join(syllables).capitalize() + rng.choice(_CODAS)] = None
    if len(names) < n_entities:
        raise ConfigError("n_entities", f"could only make {len(names)} distinct names")
    entities, links = tuple(names), {}
    for relation in RELATIONS[:n_relations]:
        # Any index but i: draw from the n - 1 others, stepping over i.
        picks = [(i, rng.randrange(n_entities - 1)) for i in range(n_entities)]
        links[relation] = {entities[i]: entities[j + (j >= i)] for i, j in picks}
    return KnowledgeBase(entities, RELATIONS[:n_relations], links)


def multihop(n_examples: int, max_hops: int, seed: int, n_entities: int = 100,
             n_relations: int = 4, hop_answer: str = "chain") -> tuple[datasets.Dataset, datasets.Dataset]:
    """Questions over `knowledge_base(seed, ...)`: `"Who is the teacher of the friend of Alba?"`.

    Args:
      n_examples: multi-hop compositions wanted (fewer only if the distinct ones run out).
      max_hops: the longest relation chain, >= 1; difficulty = number of hops.
      seed: the generator seed (it also fixes the knowledge base).
      n_entities, n_relations: the size of the knowledge base.
      hop_answer: how answers are written, a key of HOP_ANSWERS ("chain": every entity on the
        way, "Kesu, Tomer"; "final": the last one only).

    Returns:
      `(facts, compositions)`: every single-hop question (n_entities * n_relations rows,
      difficulty 1), and distinct questions of 2..max_hops hops, the hop count drawn uniformly
      per row until a hop count's distinct questions run out (n_entities * n_relations**h of
      them): with the defaults, all 1,600 two-hop questions, then three-hop ones up to
      n_examples (6,400 exist; no rows when max_hops == 1).
    """
    _check_count("n_examples", n_examples, 0)
    _check_count("max_hops", max_hops, 1)
    if hop_answer not in HOP_ANSWERS:
        raise ConfigError("hop_answer", f"unknown answer format '{hop_answer}'", allowed=HOP_ANSWERS)
    write = HOP_ANSWERS[hop_answer]
    kb = knowledge_base(seed, n_entities, n_relations)
    facts = [(question((r,), e), kb.links[r][e], 1) for e in kb.entities for r in kb.relations]
    rng = random.Random(f"multihop-{seed}")  # Random(seed) would replay the knowledge base draws

    def draw(hops: int) -> tuple[str, str]:
        chain = tuple(rng.choice(kb.relations) for _ in range(hops))
        start = rng.choice(kb.entities)
        return question(chain, start), write(kb.path(chain, start))

    pools = {h: n_entities * n_relations**h for h in range(2, max_hops + 1)}
    return to_dataset(facts), to_dataset(_sample_unique(rng, n_examples, pools, draw))


def _check_split_sizes(n: int, what: str, val_size: int, test_size: int, min_train: int) -> None:
    _check_count("val_size", val_size, 0)
    _check_count("test_size", test_size, 0)
    if n - test_size - val_size < min_train:
        field = "test_size" if n - test_size < min_train else "val_size"
        train = f", leaving at least {min_train} for train" if min_train else ""
        raise ConfigError(field, f"only {n} {what} exist, too few for test_size={test_size} and "
                                 f"val_size={val_size}{train}")


def multihop_splits(n_examples: int, max_hops: int, seed: int, val_size: int, test_size: int,
                    n_entities: int = 100, n_relations: int = 4, hop_answer: str = "chain") -> datasets.DatasetDict:
    """Splits `multihop` so that validation and test measure composing facts the model knows.

    Args:
      n_examples, max_hops, seed, n_entities, n_relations, hop_answer: as for `multihop`.
      val_size, test_size: compositions held out for validation and for test.

    Returns:
      A DatasetDict: "train" holds every single-hop fact (a model can only compose facts it has
      seen) plus the remaining compositions, shuffled; "validation" and "test" hold only
      held-out compositions (difficulty 2..max_hops).
    """
    facts, compositions = multihop(n_examples, max_hops, seed, n_entities, n_relations, hop_answer)
    _check_split_sizes(len(compositions), "multi-hop compositions", val_size, test_size, 0)
    rng = random.Random(f"split-{seed}")
    rows = _rows(compositions)
    rng.shuffle(rows)
    train = _rows(facts) + rows[test_size + val_size:]
    rng.shuffle(train)
    return datasets.DatasetDict({"train": to_dataset(train),
                                 "validation": to_dataset(rows[test_size:test_size + val_size]),
                                 "test": to_dataset(rows[:test_size])})


# ---------------------------------------------------------------- splits

def prompt_hash(prompt: str, seed: int) -> int:
    """A prompt's place in [0, 2**64) under data seed `seed`: the first 8 bytes of a sha256, so it
    depends on nothing but the prompt and the seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()[:8], "big")


def hash_cuts(prompts, val_size: int, test_size: int, seed: int) -> tuple[int, int]:
    """Cut points that put exactly `test_size` of the unique `prompts` in test and `val_size` in
    validation: the hash of the first prompt past each (prompts below a cut are in)."""
    hashes = sorted({prompt_hash(p, seed) for p in set(prompts)})
    return hashes[test_size], hashes[test_size + val_size]  # _check_split_sizes leaves >= 1 to train


def split_by_prompt(ds: datasets.Dataset, val_size: int, test_size: int, seed: int,
                    split_by: str = "hash", cuts: tuple[int, int] | None = None) -> datasets.DatasetDict:
    """Splits by unique prompt, so that no question sits on both sides of a split.

    "hash": a prompt is test when `prompt_hash(prompt, seed)` is below `cuts[0]`, validation when
    below `cuts[1]`, train otherwise. `cuts` default to `hash_cuts` (exactly `test_size` and
    `val_size` prompts); a run keeps the cuts of its first build, so rows added to the file later
    fall where their hash puts them and no earlier prompt changes sides.
    "shuffle" (splits made before December 2026): the unique prompts are sorted and shuffled with
    `seed`; the first `test_size` go to test, the next `val_size` to validation. Any new prompt
    reshuffles them all.
    Rows keep their order within a split.

    Args:
      ds: a Dataset with a `prompt` column.
      val_size, test_size: unique prompts for validation and for test.
      seed: the data seed.
      split_by, cuts: as above (DataConfig.split_by, DataConfig.split_cuts).

    Returns:
      A DatasetDict with keys "train", "validation", "test".
    """
    prompts = column(ds, "prompt")
    if split_by == "hash":
        if cuts is None:
            _check_split_sizes(len(set(prompts)), "unique prompts", val_size, test_size, 1)
            cuts = hash_cuts(prompts, val_size, test_size, seed)
        test_cut, val_cut = cuts
        split_of = {}
        for prompt in set(prompts):
            h = prompt_hash(prompt, seed)
            split_of[prompt] = "test" if h < test_cut else "validation" if h < val_cut else "train"
    else:
        unique = sorted(set(prompts))
        _check_split_sizes(len(unique), "unique prompts", val_size, test_size, 1)
        random.Random(seed).shuffle(unique)
        split_of = dict.fromkeys(unique[:test_size], "test")
        split_of.update(dict.fromkeys(unique[test_size:test_size + val_size], "validation"))
    indices: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, prompt in enumerate(prompts):
        indices[split_of.get(prompt, "train")].append(i)
    return datasets.DatasetDict({s: ds.select(indices[s], keep_in_memory=True) for s in SPLITS})


def split_cuts_of(splits: Mapping, seed: int) -> tuple[int, int]:
    """The hash cuts that `splits` (made by hash, each with a `prompts` list) were cut at: the
    smallest hash outside test, and outside test and validation."""
    def lowest(*names):
        return min(prompt_hash(p, seed) for n in names for p in splits[n].prompts)
    return lowest("validation", "train"), lowest("train")


# ---------------------------------------------------------------- entry point

# A built-in task's splits from the DataConfig fields it reads (DataConfig.task's names:
# framework.data.registry.TASKS).
def addition_task(c: DataConfig) -> datasets.DatasetDict:
    return split_by_prompt(addition(c.n_examples, c.max_digits, c.seed, c.operand_format),
                           c.val_size, c.test_size, c.seed, "shuffle")  # a generated task has no rows to add


def multihop_task(c: DataConfig) -> datasets.DatasetDict:
    return multihop_splits(c.n_examples, c.max_hops, c.seed, c.val_size, c.test_size,
                           c.kb_entities, c.kb_relations, c.hop_answer)


def build_splits(cfg: DataConfig) -> datasets.DatasetDict:
    """The train/validation/test splits of a built-in task (`cfg.task`) or of a user's file
    (`cfg.data_path`, read by `load_file` with `cfg`'s column names), split by `cfg.seed` into
    `cfg.val_size` and `cfg.test_size` held-out prompts (compositions for multihop).

    Returns:
      A DatasetDict with keys SPLITS, each with columns prompt, answer, difficulty.
    """
    if (cfg.task is None) == (cfg.data_path is None):
        given = "both" if cfg.task is not None else "neither"
        raise ConfigError("task", f"give exactly one of a task or a data file (got {given})",
                          allowed=TASKS)
    if cfg.data_path is not None:
        ds = load_file(cfg.data_path, cfg.prompt_col, cfg.answer_col, cfg.difficulty_col)
        return split_by_prompt(ds, cfg.val_size, cfg.test_size, cfg.seed, cfg.split_by, cfg.split_cuts)
    TASKS.check(cfg.task)
    return TASKS[cfg.task](cfg)
