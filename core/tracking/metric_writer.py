"""Metrics written to MLflow off the training loop's path, by one thread of ours.

MLflow's own asynchronous logging (``log_batch(..., synchronous=False)``) waits
on its queue with a one-second timeout, so each ``flush_async_logging`` and
each ``set_terminated`` of a run that logged asynchronously sat idle for up to
a second. mentor flushes before every checkpoint (so a kill never loses an
epoch's metrics), which made every epoch up to a second longer than its
training. Here ``flush()`` returns as soon as the queue is drained.

Batches are written in the order they were put, by one thread, with
``synchronous=True``; an error in the thread is raised by the next ``put`` or
``flush``. The thread leaves when it has been idle a while and the next
``put`` starts another, so an idle tracker holds no thread.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref

IDLE_SECONDS = 5.0


class MetricWriter:
    def __init__(self, client):
        self._client = client
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        atexit.register(_flush_at_exit, weakref.ref(self))

    def put(self, run_id: str, metrics: list) -> None:
        """Queue one batch of ``mlflow.entities.Metric`` for a run."""
        self._raise()
        with self._lock:
            self._queue.put((run_id, metrics))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="mentor-metrics", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        """Return once every batch put so far is in the store (or raise what writing one raised)."""
        self._queue.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            try:
                run_id, metrics = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:  # put() holds the lock while it queues and checks for a thread
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                if self._error is None:
                    self._client.log_batch(run_id, metrics=metrics, synchronous=True)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller at its next put or flush
                self._error = exc
            finally:
                self._queue.task_done()


def _flush_at_exit(ref) -> None:
    """At interpreter exit, write what is still queued (a daemon thread would be cut off)."""
    writer = ref()
    if writer is not None:
        try:
            writer.flush()
        except Exception:  # noqa: BLE001 - nothing to report to at exit; the run resumes from its checkpoint
            pass
