"""Ctrl-C and SIGTERM as a KeyboardInterrupt that is not lost on the way.

A signal handler runs wherever the main thread happens to be, finalisers and weakref or
garbage-collector callbacks included, and Python discards an exception raised there
("Exception ignored in ..."): the KeyboardInterrupt is lost and the training goes on as
if the signal never came. So the handler also remembers the signal; training looks
after each epoch (:func:`raise_if_lost`), and whoever handles a KeyboardInterrupt
(closing its run KILLED) says so (:func:`taken`).
"""

from __future__ import annotations

from typing import Any

# Signals whose KeyboardInterrupt has been raised and has not reached a handler yet.
_raised: list[int] = []


def raise_keyboard_interrupt(signum: int, frame: Any = None) -> None:
    """The CLI's handler for SIGINT and SIGTERM alike: a KeyboardInterrupt, which closes
    runs and trials as interrupted instead of leaving them RUNNING."""
    _raised.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def raise_if_lost() -> None:
    """Raise again the KeyboardInterrupt of a signal whose first one was discarded."""
    if _raised:
        raise KeyboardInterrupt(f"signal {_raised[0]}")


def taken() -> None:
    """A KeyboardInterrupt reached a handler: no signal was lost."""
    _raised.clear()
