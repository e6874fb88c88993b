"""Ctrl-C and SIGTERM stop a study's driver the same way at any moment: a KeyboardInterrupt, its state saved.

Three moments need care, each for a reason of Ray's or Tune's:
- Ray's start (ray.init) and its shutdown are not interrupted: stopped halfway, the processes Ray
  had started are not all known to ray.shutdown, and Ray's agents outlived the driver for a minute.
  A stop meanwhile is raised once Ray has started (and the driver then shuts it down whole), or
  once it has shut down. ray.init installs SIGTERM handlers of its own (Python's, which exits
  wherever ray.init is, and its core worker's, which aborts), so SIGTERM is blocked meanwhile (in
  the driver's thread, not in the processes Ray starts) and the driver's handlers put back after.
  (A thread that native code started before, a math library's say, may still take a SIGTERM then,
  and run Ray's handlers: its SystemExit is taken as the stop it is.)
- Tune's runs (tuner.fit) stop gracefully, their state saved, but Tune's own SIGINT handler leaves
  no trace of the stop: the trials running then end TERMINATED, as if they had ended, and a phase
  whose trials were all running looked done. So the driver handles SIGINT itself
  (TUNE_DISABLE_SIGINT_HANDLER=1, Tune's documented switch), asks Tune to stop with SIGUSR1 (Tune's
  documented graceful stop), and raises KeyboardInterrupt once Tune has returned.
A second stop while Tune stops is raised at once; one that Ray's start or shutdown holds back waits
for it, unless it is the third (a Ray that hangs can still be stopped).
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@functools.cache
def unblock_sigterm_in_children() -> None:
    """Processes started from Python with a preexec_fn (all of Ray's) take SIGTERM as usual, whatever the driver blocks.

    A child inherits its parent's blocked signals: a raylet started with SIGTERM blocked would ignore Ray's own
    shutdown, and be killed, its agents left behind. Registered once per process.
    """
    os.register_at_fork(after_in_child=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}))


class Stop:
    """The driver's stop requests (Ctrl-C, SIGTERM); install() makes them its own."""

    def __init__(self) -> None:
        self.count = 0  # stops asked for so far
        self._deferring = False
        self._in_tune = False

    @property
    def requested(self) -> bool:
        return self.count > 0

    def install(self) -> None:
        """Take SIGINT and SIGTERM.

        Tune must leave SIGINT alone: the driver sets TUNE_SIGINT=1 in its environment before Tune runs.
        """
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """install() for the block; the handlers before it are put back after."""
        before = {signum: signal.getsignal(signum) for signum in SIGNALS}
        self.install()
        try:
            yield
        finally:
            for signum, handler in before.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self._deferring and self.count < 3:
            return  # raised when the block ends
        if self._in_tune and self.count == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler: stop the trials, save the state, return
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stop during the block is raised as KeyboardInterrupt once the block has ended (a third Ctrl-C at once).

        The block may replace the SIGTERM handler (ray.init does): the driver's are installed again after it.
        """
        unblock_sigterm_in_children()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        self._deferring = True
        try:
            yield
        except SystemExit:
            # SIGTERM is blocked in this thread only: another thread took one, and ray.init's handler exited.
            self.count += 1
        finally:
            self.install()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # one that came meanwhile is counted now
            self._deferring = False
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def graceful(self) -> Iterator[None]:
        """Around tuner.fit(): a first stop has Tune stop gracefully, then raises KeyboardInterrupt.

        Until Tune installs its SIGUSR1 handler (early in fit), a stop raises at once: no trial has started.
        """
        if self.requested:
            raise KeyboardInterrupt
        before = signal.signal(signal.SIGUSR1, interrupt)
        self._in_tune = True
        try:
            yield
        finally:
            self._in_tune = False
            signal.signal(signal.SIGUSR1, before)
        if self.requested:
            raise KeyboardInterrupt
