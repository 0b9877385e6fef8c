"""``poll``: the one loop that waits for a server, a process, a lock or a statistic.

Every wait in the package is "ask again until the answer is yes or the time is up"; the loop
(clock, sleep, growing interval, attempt cap) lives here once, and each caller keeps only its
question and what a timeout means to it.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], timeout_s: float, interval_s: float = 0.1, *, backoff: float = 1.0,
         attempts: int | None = None, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> T | None:
    """Call ``check`` until it returns a truthy value, and return that value; return None once
    ``timeout_s`` has passed (or ``attempts`` calls were made) without one.

    ``check`` runs at least once, and once more at the deadline, so a timeout of 0 is a single
    look. The pause starts at ``interval_s`` and is multiplied by ``backoff`` after each call. An
    exception from ``check`` ends the wait (a process that died is not worth waiting for).
    ``timeout_s`` may be ``float("inf")`` (wait until the answer is yes, or Ctrl-C).
    """
    deadline = clock() + timeout_s
    pause, calls = interval_s, 0
    while True:
        answer = check()
        calls += 1
        if answer:
            return answer
        left = deadline - clock()
        if left <= 0 or (attempts is not None and calls >= attempts):
            return None
        sleep(min(pause, left))
        pause *= backoff
