"""One progress bar for all long work (tqdm), shown only on a terminal.

Logs (the table harness, CI, a redirected run) get no carriage-return noise: without a terminal the bar is off
unless `log_every_s` asks for a line every so many seconds.
"""

from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(total: int, desc: str, *, unit: str = "it", enabled: bool = True, initial: int = 0,
                 log_every_s: float | None = None):
    """A tqdm bar on stderr (use as a context manager; `.update(n)`); disabled when `enabled` is False, when
    there is at most one step, or when stderr is not a terminal and `log_every_s` is None."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    on = enabled and total > 1 and (tty or log_every_s is not None)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True,
                disable=not on, mininterval=0.1 if tty else float(log_every_s or 0.1))
