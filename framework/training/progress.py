"""Training progress for a person: a tqdm bar on a terminal, plain lines anywhere else.

Piped to a file or a CI log, a bar's carriage returns run into the evaluation lines; there a
`PlainProgress` prints one whole line every `every_s` seconds instead, with the same interface as
the part of tqdm the trainer uses (update, set_postfix, write, close).
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class PlainProgress:
    def __init__(self, total: int, initial: int, desc: str, every_s: float = 30.0, disable: bool = False, out=None):
        self.total, self.n, self.desc, self.every_s, self.disable = total, initial, desc, every_s, disable
        self.out = out or sys.stderr
        self.postfix = ""
        self._start_n, self._start_t = initial, time.perf_counter()
        self._last = self._start_t

    def update(self, n: int) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.disable and now - self._last >= self.every_s:
            self._last = now
            rate = (self.n - self._start_n) / max(now - self._start_t, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            print(f"{self.desc}: {self.n:,}/{self.total:,} tokens ({self.n / max(self.total, 1):.0%}), "
                  f"{rate:,.0f} tok/s, {eta / 60:.1f} min left{self.postfix}", file=self.out, flush=True)

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar in tokens when stderr is a terminal, else `PlainProgress` lines."""
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, disable=not enabled, desc=desc,
                    dynamic_ncols=True, mininterval=0.5)
    return PlainProgress(total, initial, desc, disable=not enabled)
