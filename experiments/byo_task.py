"""The bring-your-own task of the flagship: multiplying by one digit, written as JSON Lines.

    python -m experiments.byo_task runs/flagship/byo/multiply.jsonl

It stands in for a user's own QA file: recoup reads it like any local file (`--data FILE
--prompt-col question --answer-col answer --difficulty-col digits`), splits it by unique prompt
into train / validation / test, and knows nothing else about it. A row multiplies a number of 1..4
digits by 2..9. Numbers are written least-significant digit first and zero-padded (4 digits in,
5 out), the format in which a left-to-right decoder can carry, as the built-in addition task does:

    {"question": "8850*7=", "answer": "61140", "digits": 3}      # 588 * 7 = 4116

The file is a pure function of `seed`, so every run of the experiment reads the same problems.
Why this task and its budget (validation EM of seed 0, `small`, batch 64-128): word problems, a
look-up in a short context, reversal, a Caesar shift, subtraction with answers in ordinary digit
order and 5-digit products all stayed at or below 0.28 in probes of 0.4-0.8M tokens: too slow for a 2-hour sweep
of five seeds. This one reached 0.96 by 500k tokens of an 800k-token plan and 0.56 at the end of a
500k-token plan; the untuned recipe planned 700k (`experiments.common.BYO_BUDGET`), and issue 19 re-set it
where the tuned plain recipe converges (`experiments.fair_tuning`).
"""

from __future__ import annotations

import json
import os
import random
import sys

from framework.checkpoints.integrity import write_atomic

PROMPT_COL, ANSWER_COL, DIFFICULTY_COL = "question", "answer", "digits"


def problem(rng: random.Random) -> dict:
    """One product: a number of 1..4 digits (difficulty) times a digit 2..9, both sides LSB-first."""
    digits = rng.randint(1, 4)
    a, k = rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1), rng.randint(2, 9)
    return {PROMPT_COL: f"{a:04d}"[::-1] + f"*{k}=", ANSWER_COL: f"{a * k:05d}"[::-1], DIFFICULTY_COL: digits}


def write(path: str, n_rows: int = 20_000, seed: int = 0) -> str:
    """Write `n_rows` distinct problems to `path` (atomically: a crash never leaves half a file)."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < n_rows:
        row = problem(rng)
        if row[PROMPT_COL] not in seen:
            seen.add(row[PROMPT_COL])
            rows.append(row)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


if __name__ == "__main__":
    print(write(sys.argv[1] if len(sys.argv) > 1 else "multiply.jsonl"))
