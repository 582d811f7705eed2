"""Ensemble benchmarks: output-ensemble decode latency against k, and weight averaging's time and memory.

    python -m experiments.bench_ensembles      # also part of `make bench`

Greedy decoding of a fixed batch of 8-digit addition prompts on the demo's model shape. Weights
are random (latency does not depend on what was learned); random weights almost never emit EOS,
so every decode runs all `max_new` steps, which the table reports. As in experiments/bench.py, on
a CPU only ratios against the one-model time of the same run are reported (absolute times on a
shared 2-core machine mean little); on a GPU the times are added.
"""

from __future__ import annotations

from experiments.demo import get_config
from harness.bench_ensembles import averaging_cost, output_ensemble_latency

if __name__ == "__main__":
    print(output_ensemble_latency(get_config()))
    print(averaging_cost())
