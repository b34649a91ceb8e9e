"""Progress with an ETA: one updating line on a terminal, plain lines in logs.

On a terminal (the stream's `isatty()`), the line is redrawn in place at most
`_REDRAW_SECONDS` apart; elsewhere (CI, a log file, a notebook) a plain line
is printed every `plain_every` seconds, so logs stay readable and short.
`enabled=False` (`--quiet`) prints nothing.

Example:
```python
bar = Progress("tokenizing train", total=1189, unit="documents")
for i, document in enumerate(documents, start=1):
    ...
    bar.update(i)
bar.finish()
```
"""

import sys
import time
from collections.abc import Iterable, Iterator

# Redraw a terminal line at most this often: drawing costs nothing visible,
# but thousands of writes a second slow a remote terminal down.
_REDRAW_SECONDS = 0.2
# The ETA is shown once the rate rests on this much elapsed time.
_ETA_AFTER_SECONDS = 1.0


class Progress:
    """Progress of `done` out of `total` units, with rate and time left.

    Args:
        label: what is in progress, e.g. `"tokenizing train"`.
        total: the number of units when done, or None when unknown (no ETA).
        initial: units already done before this process started (a resumed
            run); the rate, and so the ETA, counts only units done here.
        unit: the unit's name in the line, e.g. `"documents"`.
        enabled: False prints nothing (quiet runs).
        stream: where to write; default `sys.stderr`, read at construction.
        plain_every: seconds between plain lines when `stream` is no
            terminal; None prints none but the final one (for a caller that
            logs its own periodic lines).
        clock: the time source, for tests.
        approximate: `total` is an estimate (shown as "~N"; the count may pass it).
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        initial: int = 0,
        unit: str = "",
        enabled: bool = True,
        stream=None,
        plain_every: float | None = 10.0,
        clock=time.monotonic,
        approximate: bool = False,
    ):
        self.label = label
        self.approximate = approximate
        self.total = total
        self.initial = initial
        self.unit = unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.plain_every = plain_every
        self.clock = clock
        self.tty = enabled and _isatty(self.stream)
        self.start = self.last_draw = clock()
        self.done = initial
        self.note = ""
        self._drawn = False  # a terminal line is on screen, not yet ended

    def update(self, done: int, *, note: str = "") -> None:
        """Records that `done` units are complete; draws when it is time to."""
        self.done, self.note = done, note
        if not self.enabled:
            return
        now = self.clock()
        if self.tty and now - self.last_draw >= _REDRAW_SECONDS:
            self._draw_terminal(now)
        elif not self.tty and self.plain_every is not None:
            if now - self.last_draw >= self.plain_every:
                self._print(self.line(now))
                self.last_draw = now

    def say(self, message: str) -> None:
        """Prints `message` on a line of its own; the next update redraws the bar under it."""
        if not self.enabled:
            return
        self.clear()
        self._print(message)

    def clear(self) -> None:
        """Erases the terminal line, e.g. before an error message is printed."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
            self.last_draw = -float("inf")  # redraw at the next update

    def finish(self, *, note: str | None = None) -> None:
        """Ends the line with the final count and the elapsed time."""
        if note is not None:
            self.note = note
        if not self.enabled:
            return
        self.clear()
        self._print(self.line(self.clock(), final=True))

    def line(self, now: float, *, final: bool = False) -> str:
        """The progress text at time `now`."""
        elapsed = max(now - self.start, 1e-9)
        if self.total is None or (final and self.approximate):
            count = f"{self.done:,}"
        else:
            count = f"{self.done:,}/{'~' if self.approximate else ''}{self.total:,}"
        parts = [f"{self.label}: {count} {self.unit}".rstrip()]
        if self.total and not final:
            parts[0] += f" ({min(self.done / self.total, 1.0):.0%})"
        if self.note:
            parts.append(self.note)
        if final:
            parts.append(f"done in {format_duration(elapsed)}")
        else:
            left = eta_seconds(
                self.done - self.initial, self.total - self.initial if self.total else None,
                elapsed=elapsed,
            )
            if left is not None and elapsed >= _ETA_AFTER_SECONDS:
                parts.append(f"ETA {format_duration(left)}")
        return ", ".join(parts)

    def _draw_terminal(self, now: float) -> None:
        self.stream.write("\r\x1b[K" + self.line(now))
        self.stream.flush()
        self.last_draw, self._drawn = now, True

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def track(items: Iterable, *, label: str, total: int | None = None, unit: str = "",
          enabled: bool = True, approximate: bool = False) -> Iterator:
    """Yields `items`, showing how many have passed, and finishes the line at the end
    (`approximate`: `total` is an estimate, as `Progress` takes it)."""
    bar = Progress(label, total=total, unit=unit, enabled=enabled, approximate=approximate)
    count = 0
    for item in items:
        yield item
        count += 1
        bar.update(count)
    bar.finish()


def eta_seconds(done: int, total: int | None, *, elapsed: float) -> float | None:
    """Seconds left at the rate so far; None without a total or any progress."""
    if not total or done <= 0:
        return None
    return elapsed / done * max(total - done, 0)


def format_duration(seconds: float) -> str:
    """`42s`, `3m07s` or `2h05m`."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
