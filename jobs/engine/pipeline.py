"""Stages in threads joined by bounded queues: how the engine overlaps tokenizing, padding, the device and
decoding. The first failure anywhere stops every stage and is raised on the calling thread."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits (Python's default is 0.005). The device
thread gives the GIL up in every torch call and must get it back quickly, or it waits behind the
host threads' Python work once per kernel launch."""

# None ends a queue's stream, and is also what a stage waiting for input gets once the line stops (no stage
# outputs None): an ended stream and a stop end a stage's loop the same way.


class Line:
    """Stages in threads, each mapping what its input queue holds to zero or more outputs.

    The stage named None runs on the calling thread (the device stage); stages stop at the
    first failure anywhere, and :meth:`run` raises it once every thread has ended.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.stages: list[tuple[str | None, Callable[[Any], Any], queue.Queue[Any] | None,
                                queue.Queue[Any] | None]] = []

    def stage(self, name: str | None, fn: Callable[[Any], Any], source: queue.Queue[Any] | None,
              depth: int | None) -> queue.Queue[Any] | None:
        target: queue.Queue[Any] | None = queue.Queue(depth) if depth else None
        self.stages.append((name, fn, source, target))
        return target

    def run(self, on_each: Callable[[], None]) -> None:
        import torch

        def work(fn: Callable[[Any], Any], source: queue.Queue[Any] | None, target: queue.Queue[Any] | None,
                 each: Callable[[], None] | None = None) -> None:
            try:
                with torch.inference_mode():
                    inputs: Any = [None] if source is None else iter(lambda: _get(source, self.stop), None)
                    for value in inputs:
                        for output in fn(value):
                            if target is not None and not _put(target, output, self.stop):
                                return
                        if each is not None:
                            each()
            except BaseException as exc:  # noqa: BLE001 - raised on the calling thread below
                self.failures.append(exc)
                self.stop.set()
            finally:
                if target is not None:
                    _put(target, None, self.stop)

        threads = [threading.Thread(target=work, args=(fn, source, target), name=f"batchformers-{name}",
                                    daemon=True) for name, fn, source, target in self.stages if name is not None]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
        try:
            for thread in threads:
                thread.start()
            for name, fn, source, target in self.stages:
                if name is None:
                    work(fn, source, target, on_each)
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
        if self.failures:
            raise self.failures[0]


def _put(target: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put unless stopped; False once stopped (the end of a stream, None, always gets through once there is
    room or nothing waits: its result is not looked at)."""
    while True:
        try:
            target.put(item, timeout=0.05)
            return not stop.is_set()
        except queue.Full:
            if stop.is_set():
                return False


def _get(source: queue.Queue[Any], stop: threading.Event) -> Any:
    """The next item, or None once stopped."""
    while True:
        try:
            return source.get(timeout=0.05)
        except queue.Empty:
            if stop.is_set():
                return None
