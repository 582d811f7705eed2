"""What the fuzzing tests of configs, `recoup` arguments and data files (tests/test_fuzz_*.py) share:
the in-process CLI runner with its data-preparation stubs, and strategies used by more than one of
them (their sandbox fixture is in conftest).

Whatever the input, it ends in a ConfigError naming the field, flag, file, line or column (the CLI
prints it as one line and exits 2), never in a traceback from inside jax or datasets, and never in
a started run: the CLI's data preparation is stubbed so that a test fails if bad input gets that far.
Each property runs a bounded number of examples; `make chaos` runs many more:

    RECOUP_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/test_fuzz_*.py -q -p no:cacheprovider
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

import pytest
from hypothesis import note
from hypothesis import strategies as st

import framework.data.encoding
from framework.app.cli import main


class Reached(Exception):
    """Raised by the stubbed data preparation: the CLI accepted its input and would have trained."""


def stop_before_training(cfg):
    raise Reached()


_REAL_PREPARE = framework.data.encoding.prepare


def stop_after_reading_data(cfg):
    _REAL_PREPARE(cfg)  # reads the data file: the errors under test come from here
    raise Reached()


def _fresh(sandbox, name: str = "f") -> str:
    return str(sandbox["root"] / f"{next(sandbox['n'])}-{name}")


def run_cli(argv: list[str], prepare=stop_before_training) -> tuple[str, str]:
    """(outcome, stderr) of `recoup ARGV` in process: outcome is "rc=N", or "reached" where
    `recoup train` called `prepare`. It is patched for train only, which imports it at call time:
    a module that binds it at import (framework.training.runs, for eval) must never catch the stub."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        if argv[0] == "train":
            mp.setattr(framework.data.encoding, "prepare", prepare)
        try:
            outcome = f"rc={main(argv)}"
        except SystemExit as e:  # argparse: a flag's value of the wrong type
            outcome = f"rc={e.code}"
        except Reached:
            outcome = "reached"
    note(f"recoup {argv!r} -> {outcome}\n{err.getvalue()}")
    assert "Traceback" not in err.getvalue() + out.getvalue()
    return outcome, err.getvalue()


def error_field(stderr: str) -> str:
    """The field or flag that the CLI's error line names: 'recoup: error: FIELD: ...' (ours, one
    line) or '... error: argument --FLAG: ...' (argparse, after its usage lines)."""
    lines = stderr.strip().splitlines()
    assert lines, "no error message"
    m = re.match(r"recoup: error: ([\w.\-]+): \S", lines[-1])
    if m:
        assert len(lines) == 1, f"more than the one error line: {lines}"
        return m.group(1).replace("-", "_")
    m = re.match(r"recoup[\w -]*: error: argument --([\w-]+)", lines[-1])
    assert m, f"not a recoup error line: {lines[-1]!r}"
    return m.group(1).replace("-", "_")


_int = st.integers(-2**70, 2**70)


def outside(lo: float, hi: float, lo_ok: bool = True, hi_ok: bool = True):
    """Floats outside the interval (lo_ok: lo itself is inside), NaN and infinities."""
    out = st.floats(max_value=lo, exclude_max=lo_ok) | st.sampled_from([math.nan, math.inf, -math.inf])
    return out | st.floats(min_value=hi, exclude_min=hi_ok) if math.isfinite(hi) else out


def some_of(strategies: dict) -> st.SearchStrategy:
    """One to three distinct keys of `strategies`, each with a value drawn from its strategy."""
    return st.lists(st.sampled_from(sorted(strategies)).flatmap(lambda k: st.tuples(st.just(k), strategies[k])),
                    min_size=1, max_size=3).map(lambda pairs: tuple(dict(pairs).items()))


def json_values(finite: bool = False):
    floats = st.floats(allow_nan=not finite, allow_infinity=not finite)
    return st.recursive(st.none() | st.booleans() | _int | floats | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=3), max_leaves=6)


JSON_VALUES = json_values()


def _fails(parse):
    def fails(text: str) -> bool:
        try:
            parse(text)
        except (ValueError, OverflowError):
            return True
        return False
    return fails


def jsonl(rows) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def encode(lines) -> bytes:
    return ("\n".join(lines) + "\n").encode()
