"""Ctrl-C and SIGTERM held back through a step that must not be cut in two (cli.py installs the
handlers that end a run; sinks.py and engine.py hold them while a temporary is made and registered
for removal, while outputs commit or are discarded, and while a local Dask cluster starts).
"""

from __future__ import annotations

import contextlib
import signal
import threading

_HELD = (signal.SIGINT, signal.SIGTERM)
_arrived: list[int] = []  # the signals held back, in the order they came


def _hold(signum, frame) -> None:
    _arrived.append(signum)


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait for the block to end, then arrive: their handlers run as it ends (the
    block gets the list of those waiting, empty until one comes). Python runs signal handlers in the
    main thread only, so in any other there is nothing to hold; a signal ignored stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    if any(signal.getsignal(signum) is _hold for signum in _HELD):  # within an outer block: it delivers them
        yield _arrived
        return
    previous = {}
    try:
        for signum in _HELD:
            if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                previous[signum] = signal.signal(signum, _hold)
        yield _arrived
    finally:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is _hold:  # unless a handler changed it, a signal having come during the setup
                signal.signal(signum, handler)
        waiting = _arrived[:]
        _arrived.clear()
        for signum in waiting:
            signal.raise_signal(signum)  # its handler runs here and now (a run's raises)
