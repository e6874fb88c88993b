"""How a study's driver takes Ctrl-C and SIGTERM (search.stopping), in this process with stand-ins for Ray and Tune.

The whole driver stopped in each phase is tests/test_search_faults.py's; here, each moment's rule alone.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.stopping import Stop

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def stop():
    stop = Stop()
    with stop.installed():
        yield stop


def test_a_stop_outside_ray_and_tune_is_a_keyboard_interrupt_at_once(stop):
    for signum in (signal.SIGINT, signal.SIGTERM):
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # interrupted long before


# In a process of its own: SIGTERM is held back in the driver's thread, and this one has others (torch's) that
# would take it; the driver's has none until it imports the libraries that start them.
WHILE_RAY_STARTS = """
import os, signal, subprocess, sys, time
from search.stopping import Stop

def sigterm_blocked(pid):
    mask = next(line for line in open(f"/proc/{pid}/status") if line.startswith("SigBlk:")).split()[1]
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))

stop = Stop()
stop.install()
try:
    with stop.deferred():
        signal.signal(signal.SIGTERM, lambda *_: os._exit(15))  # as ray.init does: a handler that exits
        # Ray starts its processes with a preexec_fn; a child inherits its parent's blocked signals.
        child = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: None)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        print("block ended", stop.count, flush=True)
except KeyboardInterrupt:
    print("raised after it", stop.count)
print("handler back", signal.getsignal(signal.SIGTERM) == stop._on_signal, "unblocked", not sigterm_blocked(os.getpid()))
print("child blocks none", not sigterm_blocked(child.pid))
child.terminate()
print("child ended by", child.wait(timeout=10))
"""


def test_a_stop_while_ray_starts_waits_for_its_start_and_leaves_its_processes_their_sigterm():
    proc = subprocess.run([sys.executable, "-c", WHILE_RAY_STARTS], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "block ended 1",  # neither stop cut the block short (the SIGTERM waits, blocked)
        "raised after it 2",
        "handler back True unblocked True",  # the driver's handler again, over the one the block put in place
        "child blocks none True",
        f"child ended by {-signal.SIGTERM}",
    ], proc.stdout


def test_a_third_ctrl_c_while_ray_starts_or_stops_is_raised_at_once(stop):
    with pytest.raises(KeyboardInterrupt):
        with stop.deferred():
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            pytest.fail("the third Ctrl-C was held back")


def fake_fit(seen: list) -> None:
    """Tune's fit as the driver meets it: a SIGUSR1 handler of its own that ends the run, which then returns."""
    asked = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(True))
    deadline = time.monotonic() + 10
    while not asked and time.monotonic() < deadline:
        if not seen:
            seen.append("running")
            os.kill(os.getpid(), signal.SIGTERM)  # the stop, while trials run
        time.sleep(0.01)
    seen.append("returned" if asked else "never asked to stop")


def test_a_stop_during_tunes_run_has_tune_return_then_is_raised(stop):
    seen: list = []
    with pytest.raises(KeyboardInterrupt):
        with stop.graceful():
            fake_fit(seen)
    assert seen == ["running", "returned"]  # Tune stopped its way (its state saved), not cut short
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_a_stop_before_tune_listens_is_raised_at_once(stop):
    with pytest.raises(KeyboardInterrupt):
        with stop.graceful():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)


def test_a_run_of_tune_without_a_stop_goes_on_and_gives_sigusr1_back(stop):
    from search.stopping import interrupt

    seen = []
    with stop.graceful():
        seen.append(signal.getsignal(signal.SIGUSR1))  # until Tune's fit sets its own: a stop raises at once
    assert not stop.requested and seen == [interrupt]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the handler before is back
