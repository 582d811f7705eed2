"""The Llama-family training benchmark (harness/bench_llama.py, issue 22) runs end to end at a tiny
size: both loops train the factory's model and the result has the shape its section reports.
No timing is asserted (that is `make bench`'s job, on a quiet machine)."""

import math

from harness.bench_llama import SECTION, llama_benchmark, llama_section
from tests.conftest import tiny_config


def test_the_llama_benchmark_runs_both_loops_at_a_tiny_size(tmp_path):
    r = llama_benchmark(tiny_config(tmp_path / "unused"), size="tiny", batch_size=16, tokens=4_000, hand_steps=3,
                        repeats=1)
    assert len(r["hand"]) == len(r["recoup"]) == 1
    assert all(math.isfinite(x) and x > 0 for x in r["hand"] + r["recoup"])
    assert math.isclose(r["ratio"], r["recoup"][0] / r["hand"][0])
    assert r["params"] > 0 and r["seq_len"] > 0
    assert r["shape"]["num_key_value_heads"] < r["shape"]["num_attention_heads"]  # grouped-query attention
    section = llama_section(r)
    assert section.startswith(SECTION + "\n") and "| recoup `train` / hand-written loop" in section
