"""Stopping on a signal: at once outside a stage, at the stage's next safe point inside one.

    install_stop_handlers()                       first thing in the process
    with stop_on_signal() as received: ...        a stage's work; `received` lists the signals that came
"""

from __future__ import annotations

import contextlib
import signal
import sys

from pipeline.errors import Stopped


def install_stop_handlers() -> None:
    """First thing in the process: SIGTERM/SIGINT stop the job at once (exit 143/130) wherever it is: converting
    or loading a model, between stages, scoring. Inside a stage's stop_on_signal they wait for its next safe point.

    Python as PID 1 (a container's ENTRYPOINT in exec form, as in this image) would otherwise ignore SIGTERM: the
    kernel applies no default action to PID 1, so `docker stop` or a pod deletion waited for SIGKILL.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_now)


def _stop_now(signum, frame):
    raise Stopped(signum, f"stopped by {signal.Signals(signum).name}; finished outputs are kept: rerun the same "
                          "command to resume")


@contextlib.contextmanager
def stop_on_signal():
    """While active, SIGTERM/SIGINT only record the signal, so the stage can stop at a safe point (after a training
    step, with a checkpoint; after a flushed generation batch) and raise Interrupted. A second signal stops at once.

    Kubernetes sends SIGTERM on preemption and eviction, then SIGKILL after the grace period (30 s by default).
    """
    received: list[int] = []

    def record(signum, frame):
        if received:
            raise Stopped(signum, f"stopped at once by a second {signal.Signals(signum).name}; finished outputs "
                                  "are kept: rerun the same command to resume")
        received.append(signum)
        print(f"received {signal.Signals(signum).name}: stopping at the next safe point "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
