"""The stopping rules by name, and `build`: `[{"rule": "patience", "patience": 3}, ...]` -> one rule.

Apart from rules.py so that a rule defined in its own module (the budget rule) can use rules.py's
types and checks without the two importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from framework.errors import ConfigError
from framework.stopping.budget_rule import budget_rule
from framework.stopping.rules import (
    StopRule,
    _check_choice,
    all_of,
    any_of,
    grad_norm_plateau,
    moving_average,
    paired_test,
    patience,
)

RULES: dict[str, Callable[..., StopRule]] = {
    "patience": patience,
    "moving-average": moving_average,
    "grad-norm": grad_norm_plateau,
    "paired-test": paired_test,
    "budget": budget_rule,  # imports scipy only when it first fits a curve
}


def build(specs: Sequence[dict], combine: str = "any") -> StopRule | None:
    """`[{"rule": "patience", "patience": 3}, ...]` -> one StopRule (None for no specs)."""
    _check_choice("stop_combine", combine, ("any", "all"))  # even without rules: a typo is still a typo
    if not specs:
        return None
    rules = []
    for spec in specs:
        if not isinstance(spec, dict) or "rule" not in spec:
            raise ConfigError("stop_rules", f"{spec!r} must be a mapping with a 'rule' key", RULES)
        name = spec["rule"]
        if not (isinstance(name, str) and name in RULES):
            raise ConfigError("stop_rules", f"unknown rule {name!r}", RULES)
        try:
            rules.append(RULES[name](**{k: v for k, v in spec.items() if k != "rule"}))
        except TypeError as e:
            raise ConfigError("stop_rules", f"rule {name!r}: {e}") from None
    return rules[0] if len(rules) == 1 else (any_of if combine == "any" else all_of)(*rules)
