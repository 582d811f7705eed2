"""Values as users type them on the command line: token counts ('2.5M', '500k'), a share of a
budget or a count ('0.62', '40k'), and lists of stopping points ('0.5,0.62')."""

from __future__ import annotations

import math
import re

from framework.errors import ConfigError


def parse_stops(text: str) -> tuple[float, ...]:
    """'0.5,0.62,1.0' -> (0.5, 0.62, 1.0); 1.0 is always added (a run ends at its budget)."""
    try:
        fractions = {float(p) for p in text.split(",") if p.strip()}
    except ValueError:
        raise ConfigError("stops", f"{text!r} is not a comma-separated list of numbers") from None
    return tuple(sorted(fractions | {1.0}))


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_tokens(text: str | int, field: str = "budget_tokens") -> int:
    """Token counts as '2500000', '2.5M', '500k' or '1e6' -> int."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbg]?)\s*", str(text).lower())
    value = float(m.group(1)) * _UNITS[m.group(2)] if m else math.nan
    if not math.isfinite(value):  # '1e400' matches, but is no count
        raise ConfigError(field, f"{text!r} is not a token count (examples: 2500000, 2.5M, 500k)")
    return int(round(value))


def parse_share_or_tokens(spec: str | float, planned_tokens: int, field: str, minimum: int = 1) -> int:
    """'0.62' (a share of `planned_tokens`, in (0, 1]) or a whole token count ('40000', '500k', '1.2M')
    -> tokens. Anything else is a ConfigError naming `field`: 0 or less, a number above 1 that is not
    whole ('1.5'), or fewer tokens than `minimum` (a caller's one batch: '2.0' is no cooldown)."""
    try:
        value = float(spec)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):  # not a number: a count such as '500k', or an error naming `field`
        tokens = parse_tokens(str(spec), field)
    elif 0 < value <= 1:
        tokens = int(value * planned_tokens)
    elif value > 1 and value == int(value):
        tokens = int(value)
    elif value <= 0:
        raise ConfigError(field, f"{spec!r} gives no tokens: give a share of the budget (0.05) or a count (40k)")
    else:
        raise ConfigError(field, f"{spec!r} is neither a share of the budget in (0, 1] (0.05) nor a whole token "
                                 "count (40000, 40k)")
    if tokens < minimum:
        raise ConfigError(field, f"{spec!r} gives {tokens:,} tokens, fewer than one batch ({minimum:,}): give a "
                                 "share of the budget (0.05) or a count (40k)")
    return tokens
