"""The video pipeline's threads and bounded queues: a stage keeps its exception for the main thread, and neither side
of a queue blocks forever once the other has gone."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

END = object()
"""The marker a producer puts after its last item."""


class Stage(threading.Thread):
    """A thread that runs `work` and keeps its exception for the main thread."""

    def __init__(self, name: str, work: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.work = work
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as e:  # handed to the main thread, which raises it
            self.error = e


def put(q: queue.Queue[Any], item: object, stop: threading.Event) -> bool:
    """Put without blocking forever: False once `stop` is set (the other side has gone)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def get(q: queue.Queue[Any], stop: threading.Event, producer: Stage | None) -> Any:
    """The next item, or END once `stop` is set or the `producer` thread (None: the main thread) has ended."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set() or (producer is not None and not producer.is_alive()):
                # The producer ended without its end marker: it failed (its error is raised by the caller).
                try:
                    return q.get_nowait()
                except queue.Empty:
                    return END
