"""The write-behind buffer: a worker's checked hits, held in memory and written to Redis
in batches by one writer thread, so that no request waits on Redis.

A request appends its hit and is answered at once. The writer wakes when the buffer holds
`batch_hits` hits or `flush_seconds` after the first one arrived, whichever comes first,
takes what is there (in order) and hands it to the live store, which writes it in as few
round trips as it can (one script call per site, pipelined). A batch that fails because
Redis is down, stalled or full is sent again, as it was, with back-off, until it goes
through; the store makes that safe (live.py: a batch applied twice counts once). While it
is retried, new hits wait behind it, up to `max_hits`; past that, `put` refuses them. When
only part of Redis failed (a cluster master: `Transient.partial`), each retry takes the
hits that came meanwhile along with it, so that the sites of the masters that answer are
written; the store keeps a site's newer batches behind its failed one.

What a crash can lose: what the buffer holds, normally one flush interval's hits (kill -9
of a worker; measured in tests/test_write_behind.py). On a clean stop (SIGTERM, a deploy,
gunicorn recycling a worker) `close` drains the buffer first; what Redis has not taken when
the drain time is over goes to `spill` (spool.py: a file the next worker writes), and
`resume` gives a new buffer such batches to write before anything else. Those a stop comes
before are not spilled again: they are still in their file, which stays. Batches whose
sending raises an unexpected error (a bug) are spilled too, rather than lost or retried
for ever, and the writer goes on. Every `sweep_seconds` the writer calls `sweep`, which
hands it files no worker holds (`resume`) as long as it has `room`: what a bug set aside,
or a stopped worker left with no other starting after it, waits minutes, not for the next
deploy.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Generic, TypeVar

from . import metrics
from .logs import reason

log = logging.getLogger(__name__)

Hit = TypeVar("Hit")
Batch = TypeVar("Batch", bound=Sized)  # its len() is how many hits it holds

# Most hits taken from the buffer at once: after an outage the backlog drains in steps of
# this size, each step a few script calls that keep Redis busy a few milliseconds only.
TAKE_HITS = 2048
# Back-off between attempts while Redis is unavailable: doubling from the first to the last.
BACKOFF_SECONDS = (0.05, 5.0)
# How often the stopping thread looks up from waiting for the writer, to run a signal's
# handler (close).
SIGNAL_CHECK_SECONDS = 0.1
# How long a stop waits for the writer's spill of what it holds, past the drain: cut
# short, the process exits with all of it (30,720 hits took more than a second on a busy
# machine). gunicorn's master ends the wait at its graceful timeout (GUNICORN_GRACEFUL_TIMEOUT,
# 20 s by default in gunicorn.conf.py).
SPILL_WAIT_SECONDS = 30.0
# The longest back-off after a partial failure: the retry also writes the hits that came
# meanwhile for the part of Redis that answers, so this is how late they may be.
PARTIAL_BACKOFF_MAX_SECONDS = 1.0


# Every buffer of this process, so that a forked child starts each of them empty.
_buffers: weakref.WeakSet[WriteBehind[object, Sized]] = weakref.WeakSet()


def _start_empty_after_fork() -> None:
    for buffer in list(_buffers):
        buffer._start_empty()


os.register_at_fork(after_in_child=_start_empty_after_fork)


class Transient(Exception):
    """Raised by `send` for batches worth sending again (Redis down, stalled, full).
    `partial`: the failure was some batches' own (a cluster master), so others may go."""

    def __init__(
        self, pending: Sequence[Sized], cause: BaseException, *, partial: bool = False
    ) -> None:
        super().__init__(str(cause))
        self.pending = list(pending)
        self.cause = cause
        self.partial = partial


@dataclass(frozen=True)
class Resumed(Generic[Batch]):
    """A file's batches handed over by a stopped worker (`resume`), in pieces; what to call
    once they are written (or not); and whether the file still notes what Redis answered."""

    pieces: list[list[Batch]]
    done: Callable[[bool], None]
    noting: Callable[[], bool]


class WriteBehind(Generic[Hit, Batch]):
    """`prepare` turns hits into batches (numbered once, so a batch sent again is the same
    batch); `send` writes batches and raises Transient with those still to send."""

    def __init__(
        self,
        prepare: Callable[[list[Hit]], list[Batch]],
        send: Callable[[list[Batch]], None],
        *,
        max_hits: int,
        batch_hits: int,
        flush_seconds: float,
        loud: tuple[type[BaseException], ...] = (),
        spill: Callable[[list[Batch]], bool] | None = None,
        sweep: Callable[[], None] | None = None,
        sweep_seconds: float = 60.0,
    ) -> None:
        self._prepare = prepare
        self._send = send
        # Keeps the batches not written at a stop for another process; False if it cannot.
        self._spill = spill
        # Causes logged at ERROR (Redis out of memory needs an operator), others at WARNING.
        self._loud = loud
        self._sweep = sweep
        self._sweep_seconds = sweep_seconds
        self.max_hits = max_hits
        self.batch_hits = batch_hits
        self.flush_seconds = flush_seconds
        self._start_empty()
        _buffers.add(self)

    def _start_empty(self) -> None:
        """The state of a new buffer; also a forked child's, whose parent's hits, lock and
        writer thread are not its own (the lock may even have been held at the fork)."""
        self._cond = threading.Condition()
        self._queue: deque[Hit] = deque()
        # Batches handed over by a stopped worker (resume), in pieces, each file's with what
        # to call once they are written: sent before any hit of the queue.
        self._resumed: deque[Resumed[Batch]] = deque()
        self._queued_file_hits = 0  # hits of the files in _resumed
        self._later_pieces = 0  # hits of the file being written, in pieces not yet sent
        self._submitted = 0  # hits ever put
        # Hits ever taken and written (or given up on, at a stop), in the order they were
        # put: `flush` waits on it. Those written ahead of earlier ones still retried (a
        # partial failure) are in _written_ahead until the earlier ones are written too.
        self._written = 0
        self._written_ahead = 0
        self._in_hand = 0  # hits the writer has taken and not yet counted in _written
        self._lost = 0  # of those, the ones given up on
        self._flush_to = 0  # the writer does not wait while _written is below this
        self._stopping = False
        self._drain_deadline = float("inf")
        # The batches of this worker's own hits the writer is sending, for `close` to spill
        # should the writer be stuck in a send; and how many hits of resumed batches it is
        # sending (those are still in their file).
        self._sending: list[Batch] = []
        self._sending_from_file = 0
        # Set by the writer when a stop came before some resumed batches were written.
        self._left_in_file = False
        # Set by `close` once it spilled for a writer stuck past the drain: the writer, should
        # its send end, writes and spills nothing more (a second copy would count twice).
        self._abandoned = False
        self._spilling = False  # the writer is in `_give_up`: `close` leaves the spill to it
        self._spill_began = 0.0
        self._spill_ended = 0.0
        self._setting_aside = False  # the writer spills its batches in flight (`_set_aside`)
        self._aside_delay = BACKOFF_SECONDS[0]  # the pause after the next set-aside
        self._writer_ended = False
        self._thread: threading.Thread | None = None
        # When the writer next calls `sweep`; never without one.
        self._next_sweep = time.monotonic() + self._sweep_seconds if self._sweep else None
        # Why the writer's last attempt failed; None once a batch went through again.
        self.last_error: BaseException | None = None

    # -- the request side ---------------------------------------------------------------

    def put(self, hit: Hit) -> bool:
        """Buffer a hit; False when the buffer is full (nothing is buffered then)."""
        self._ensure_writer()
        with self._cond:
            if self._own_held() >= self.max_hits or self._stopping:
                return False
            self._queue.append(hit)
            self._submitted += 1
            if len(self._queue) == 1 or len(self._queue) >= self.batch_hits:
                self._cond.notify_all()
        return True

    @property
    def full(self) -> bool:
        """Whether `put` refuses hits now (or would, being stopped)."""
        with self._cond:
            return self._own_held() >= self.max_hits or self._stopping

    @property
    def room(self) -> int:
        """How many more hits of stopped workers' files the worker may take on (`resume`):
        a bound's worth on top of its own, which it takes whatever the files hold; none
        once stopping."""
        with self._cond:
            return 0 if self._stopping else max(self.max_hits - self._in_files(), 0)

    def _held(self) -> int:
        """Waiting and being written alike: the hits the worker holds that are not in Redis."""
        return self._submitted - self._written - self._written_ahead

    def _own_held(self) -> int:
        """The hits of `_held` that are the worker's own, which its bound is for."""
        return self._held() - self._in_files()

    def _in_files(self) -> int:
        """The hits of resumed files not yet written: queued, in later pieces, in flight.
        They stay in their files until written (called with the lock held)."""
        return self._queued_file_hits + self._later_pieces + self._sending_from_file

    def flush(self, timeout: float | None = None) -> None:
        """Return once every hit put before this call is written (tests, and readers that
        must see their own hits). TimeoutError if that takes longer than `timeout`."""
        self._ensure_writer()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            while self._written < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{target - self._written} hit(s) not written yet")
                self._cond.wait(remaining)

    def close(self, timeout: float) -> int:
        """Stop taking hits, write what is buffered within `timeout` seconds, and stop the
        writer; returns how many hits could not be written in that time (logged)."""
        with self._cond:
            self._stopping = True
            # Not later than a `give_up` before the stop (a worker timeout) asked for.
            self._drain_deadline = min(self._drain_deadline, time.monotonic() + timeout)
            self._cond.notify_all()
            thread = self._thread
        left = None  # hits this thread took over from a stuck writer and lost
        if thread is not None and thread.is_alive():
            while left is None and not self._wait_for_writer():
                left = self._spill_for_stuck_writer()
            if left is None:
                thread.join(1)  # past its last line
        with self._cond:
            if left is None:  # the writer ended: it counted its losses (_lost)
                left = self._held()
            lost = self._lost + left
        if left:
            metrics.hits_lost(left)
        if lost:
            log.error("write-behind: %d buffered hit(s) not written before the stop", lost)
        return lost

    def _wait_for_writer(self) -> bool:
        """Whether the writer ended, waiting until a second after the drain time: the
        time `give_up` cuts short (a join planned at the stop outlived the master's SIGKILL
        2 s after a SIGQUIT, while the writer waited on a stalled Redis). Longer while the
        writer spills (SPILL_WAIT_SECONDS), and a second after its spill: its accounting
        is left to do (a stop that woke at the spill's end past the drain time took the
        writer for stuck, and logged and counted every hit spilled as lost: CI, a busy
        machine)."""
        with self._cond:
            while not self._writer_ended:
                until = max(self._drain_deadline, self._spill_ended) + 1
                if self._spilling:
                    until = max(until, self._spill_began + SPILL_WAIT_SECONDS)
                left = until - time.monotonic()
                if left <= 0:
                    return False
                # In short waits: a signal the kernel hands another thread (a process's
                # signal goes to any of its threads) has its Python handler run by this,
                # the main thread, only between two waits, and `give_up` is such a handler.
                self._cond.wait(min(left, SIGNAL_CHECK_SECONDS))
        return True

    def _spill_for_stuck_writer(self) -> int | None:
        """The writer still waits on an attempt begun before the drain time was over (a
        Redis that stalls, and a Redis timeout longer than what was left): the process
        exits without it, so what it holds goes to `spill` from here. Its batch in flight
        is spilled too: should Redis run it, hits.lua recognises it (its writer's latest).
        Resumed batches stay in their files. How many hits are lost (the writer, should its
        attempt end, counts none of them); None when the writer began to spill since the
        wait ended: it is to be waited for (else the process exited in the middle of its
        spill, and with it every hit it held)."""
        with self._cond:
            if self._spilling and time.monotonic() < self._spill_began + SPILL_WAIT_SECONDS:
                return None
            held = self._own_held()  # those of files stay there
            self._abandoned = True  # from here on, the writer counts no loss: this does
            if self._spilling:  # the writer itself is at it (a large file, a slow disk), and
                return held  # the process exits before it ends
            rest = self._take_all()
            sending = [] if self._setting_aside else list(self._sending)  # the writer's spill
        prepared = self._prepare(rest) if rest else []
        dropped = len(rest) - sum(map(len, prepared))  # lost in preparing, and counted there
        batches = sending + prepared
        spilled = sum(map(len, batches))
        if batches and (self._spill is None or not self._spill(batches)):
            spilled = 0
        elif batches:
            log.warning(
                "write-behind: the writer still waits on Redis at the end of the stop; %d"
                " hit(s) kept on disk for the next worker",
                spilled,
            )
        return max(held - spilled - dropped, 0)

    def resume(
        self,
        pieces: list[list[Batch]],
        done: Callable[[bool], None],
        noting: Callable[[], bool] = lambda: True,
    ) -> None:
        """Write a file's batches (another process's, prepared, still in their file) before
        the hits of the queue, a piece at a time, then call `done` with whether they were
        all written. False when this process stops first, a piece met a bug, or `noting`
        says the file's record missed a note: the rest are not sent, and their file must
        stay for the next process. (The store recognises a batch it ran whose reply was
        lost, or went unnoted, only among its writer's latest: a piece is as many as that,
        and none is sent after one that may have run unrecognised.)"""
        self._ensure_writer()
        with self._cond:
            hits = sum(len(batch) for piece in pieces for batch in piece)
            self._submitted += hits
            self._queued_file_hits += hits
            self._resumed.append(Resumed(pieces, done, noting))
            self._cond.notify_all()

    def give_up(self) -> None:
        """End a drain (`close`) now, or the next one at once: a pause between two attempts
        ends, the next attempt is the last, and what is left goes to `spill` (or is logged
        as lost). For a signal that says the process must end at once; exiting from the
        drain itself lost those hits unlogged."""
        with self._cond:
            self._drain_deadline = min(self._drain_deadline, time.monotonic())
            self._cond.notify_all()

    # -- the writer -------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer now rather than at the first hit, so that it sweeps (`sweep`)
        in a worker that has none."""
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        if self._thread is not None:
            return
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="analytics-write-behind", daemon=True
                )
                self._thread.start()

    def _take(self) -> list[Hit] | None:
        """The next hits to write, in order; None once stopped and empty."""
        with self._cond:
            if self._abandoned:
                return None
            while not self._queue and not self._resumed:
                if self._stopping:
                    return None
                until_sweep = self._until_sweep()
                if until_sweep is not None and until_sweep <= 0:
                    return []  # an idle writer sweeps too (_write_all)
                self._cond.wait(until_sweep)
            if self._resumed:
                return []  # resumed batches first (_run); the queue's hits stay counted there
            due = time.monotonic() + self.flush_seconds
            while (
                len(self._queue) < self.batch_hits
                and self._written >= self._flush_to
                and not self._stopping
            ):
                remaining = due - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take_now()

    def _until_sweep(self) -> float | None:
        return None if self._next_sweep is None else self._next_sweep - time.monotonic()

    def _take_now(self) -> list[Hit]:
        """The next hits to write, in order, as many as there are up to TAKE_HITS (called
        with the lock held)."""
        return [self._queue.popleft() for _ in range(min(len(self._queue), TAKE_HITS))]

    def _take_all(self) -> list[Hit]:
        """Every hit waiting, in order (called with the lock held)."""
        hits = list(self._queue)
        self._queue.clear()
        return hits

    def _run(self) -> None:
        try:
            self._write_all()
        finally:
            with self._cond:  # `close` waits on it
                self._writer_ended = True
                self._cond.notify_all()

    def _write_all(self) -> None:
        while (hits := self._take()) is not None:
            with self._cond:
                resumed = self._resumed.popleft() if self._resumed else None
                if resumed is not None:  # in its file's count until its pieces are sent
                    self._later_pieces = sum(len(b) for piece in resumed.pieces for b in piece)
                    self._queued_file_hits -= self._later_pieces
            if resumed is not None:
                written = self._write_pieces(resumed)
                try:
                    resumed.done(written)
                except Exception:  # raised here, it ended the writer: no hit written again
                    log.exception("write-behind: a resumed file's end went wrong")
            if hits:
                self._in_hand = len(hits)  # and those _write takes along while retrying
                self._settle(functools.partial(self._write_hits, hits))
            self._sweep_when_due()

    def _sweep_when_due(self) -> None:
        """Call `sweep` once `sweep_seconds` have passed since the last time, unless the
        worker is stopping or has resumed files waiting. Also while Redis fails: a file
        taken then stays on disk until it is written, so its hits are safe either way."""
        until_sweep = self._until_sweep()
        if self._sweep is None or until_sweep is None or until_sweep > 0:
            return
        self._next_sweep = time.monotonic() + self._sweep_seconds
        with self._cond:
            if self._stopping or self._resumed:
                return
        try:
            self._sweep()
        except Exception:
            log.exception("write-behind: the sweep of kept hits failed; tried again later")

    def _write_pieces(self, resumed: Resumed[Batch]) -> bool:
        """Write a resumed file's pieces in order; whether all were written. After one that
        was not, or whose notes the file's record missed, the rest stay in their file
        unsent."""
        pieces = resumed.pieces
        for n, piece in enumerate(pieces):
            later = sum(len(batch) for rest in pieces[n + 1 :] for batch in rest)
            self._in_hand = sum(map(len, piece))
            with self._cond:  # counted in the file's hits throughout (_in_files)
                self._later_pieces, self._sending_from_file = later, self._in_hand
            self._left_in_file = False
            lost = self._settle(functools.partial(self._write, piece, in_file=True))
            if lost or self._left_in_file or (later and not resumed.noting()):
                with self._cond:  # accounted for: in their file
                    self._written += later
                    self._later_pieces = 0
                    self._cond.notify_all()
                return False
        return True

    def _write_hits(self, hits: list[Hit]) -> int:
        return self._write(self._prepare(hits))

    def _settle(self, write: Callable[[], int]) -> int:
        """Run one `_write` and account for the hits it had in hand; how many were lost."""
        try:
            lost = write()
        except Exception:
            # Our bug in preparing the hits (one in sending them is handled in _write):
            # they are lost, the writer must live on.
            lost = self._in_hand - self._written_ahead
            log.exception("write-behind: %d hit(s) lost to an unexpected error", lost)
        with self._cond:
            if self._abandoned:  # `close` counted what the writer held
                lost = 0
            self._written += self._in_hand
            self._written_ahead = 0
            self._sending, self._sending_from_file = [], 0  # nothing in flight
            self._lost += lost
            self._cond.notify_all()
            held = self._held()
        metrics.buffer_held(held)
        if lost:
            metrics.hits_lost(lost)
        return lost

    def _level(self, cause: BaseException) -> int:
        return logging.ERROR if isinstance(cause, self._loud) else logging.WARNING

    def _pause(self, seconds: float) -> None:
        """The back-off between two attempts, cut short by a stop: a worker stopped while
        its writer waits out a long pause (Redis back meanwhile) writes at once, instead of
        sleeping through its drain time and giving up. At a stop, or before one (a worker
        timeout), cut short by `give_up`."""
        with self._cond:
            if not self._stopping:  # the drain deadline is inf until `give_up`
                self._cond.wait_for(
                    lambda: self._stopping or time.monotonic() >= self._drain_deadline, seconds
                )
            else:
                self._cond.wait_for(lambda: time.monotonic() >= self._drain_deadline, seconds)

    def _write(self, pending: list[Batch], *, in_file: bool = False) -> int:
        """Write batches, retrying while Redis is unavailable; how many hits had to be given
        up (only at a stop, once the drain time is over, and none of those spilled). After
        a partial failure, each retry takes the hits that came meanwhile along with it
        (counted in _in_hand). `in_file`: `pending` are resumed batches, still in their
        file, which a stop leaves there."""
        from_file = {id(batch) for batch in pending} if in_file else set()
        delay = BACKOFF_SECONDS[0]
        while pending:
            with self._cond:
                if self._taken_over(pending, from_file):
                    return 0
                self._in_flight(pending, from_file)
            try:
                self._send(pending)
                self.last_error = None
                self._aside_delay = BACKOFF_SECONDS[0]
                return 0
            except Transient as exc:
                went = sum(map(len, pending)) - sum(map(len, exc.pending))
                pending = exc.pending
                self.last_error = exc.cause
                metrics.redis_error(exc.cause)
                with self._cond:
                    self._written_ahead += went
                    # Those that went are in Redis: neither the worker's nor their file's
                    # to hold (_own_held), nor to spill.
                    self._in_flight(pending, from_file)
                    held = self._held()
                metrics.buffer_held(held)
                # At a stop, attempts go on until the drain time is over, the last pauses
                # cut to what is left of it.
                left = self._drain_deadline - time.monotonic()
                if left <= 0:
                    return self._give_up(pending, exc.cause, from_file)
                log.log(
                    self._level(exc.cause),
                    "write-behind: Redis unavailable (%s); %d batch(es) of %d hit(s) retried "
                    "in %.2f s, %d more hit(s) waiting behind them",
                    reason(exc.cause),
                    len(pending),
                    sum(len(batch) for batch in pending),
                    delay,
                    len(self._queue),
                )
                self._pause(min(delay, left))
                longest = PARTIAL_BACKOFF_MAX_SECONDS if exc.partial else BACKOFF_SECONDS[1]
                delay = min(delay * 2, longest)
                if exc.partial:
                    with self._cond:
                        more = self._take_now()
                    if more:
                        self._in_hand += len(more)
                        pending += self._prepare(more)
            except Exception as exc:
                # Our bug, or a library's (redis-py once raised AttributeError for an ASK to
                # a master it had not mapped yet). Sent again at once, the batches would
                # likely fail alike and hold up every hit behind them; dropped, they were
                # lost. Redis may have run them: the next worker sends them as sent before.
                log.exception(
                    "write-behind: an unexpected error writing %d batch(es) of %d hit(s)",
                    len(pending),
                    sum(map(len, pending)),
                )
                return self._set_aside(pending, exc, from_file)
        return 0

    def _in_flight(self, pending: list[Batch], from_file: set[int]) -> None:
        """Note what the writer is sending: this worker's batches, for `close` to spill
        should it be stuck, and how many hits of files (called with the lock held)."""
        self._sending = [batch for batch in pending if id(batch) not in from_file]
        self._sending_from_file = sum(len(batch) for batch in pending if id(batch) in from_file)

    def _taken_over(self, pending: list[Batch], from_file: set[int]) -> bool:
        """Whether `close` took what the writer holds off its hands (called with the lock
        held): it spilled `pending`, or left them in their file, and counted any it lost.
        The writer then returns 0 lost for them, or they would be counted lost twice."""
        if self._abandoned:
            self._left_in_file = any(id(batch) in from_file for batch in pending)
        return self._abandoned

    def _set_aside(self, pending: list[Batch], cause: BaseException, from_file: set[int]) -> int:
        """Keep `pending`, which met an unexpected error, on disk for the next worker to
        write; the writer goes on with the hits behind them, after a pause that doubles
        while every send meets one (a bug in each would make a file of each flush). How
        many hits are lost."""
        with self._cond:
            if self._taken_over(pending, from_file):
                return 0
            self._setting_aside = True
        try:
            return self._keep(pending, from_file, f"an unexpected error ({reason(cause)})")
        finally:
            with self._cond:
                self._setting_aside = False
                stopping = self._stopping
            if not stopping:  # a stop drains at once
                self._pause(self._aside_delay)
                self._aside_delay = min(self._aside_delay * 2, BACKOFF_SECONDS[1])

    def _give_up(self, pending: list[Batch], cause: BaseException, from_file: set[int]) -> int:
        """At a stop, once the drain time is over: spill `pending` and every hit still
        queued, but for the batches of `from_file` (ids), which stay in their file; how many
        hits are lost (none, when the spill worked)."""
        with self._cond:
            if self._taken_over(pending, from_file):
                return 0
            self._spilling, self._spill_began = True, time.monotonic()
            rest = self._take_all()
        self._in_hand += len(rest)
        why = f"Redis unavailable at the stop ({reason(cause)})"
        try:
            return self._keep(pending + (self._prepare(rest) if rest else []), from_file, why)
        finally:
            with self._cond:  # else a later stop would wait on, and leave to, a spill long done
                self._spilling, self._spill_ended = False, time.monotonic()
                self._cond.notify_all()

    def _keep(self, batches: list[Batch], from_file: set[int], why: str) -> int:
        """Spill `batches`, but for those of `from_file` (ids: resumed batches, still in
        their file, which stays); how many hits are lost (none, when the spill worked)."""
        own = [batch for batch in batches if id(batch) not in from_file]
        self._left_in_file = len(own) < len(batches)
        if not own:
            return 0
        held = sum(map(len, own))
        if self._spill is not None and self._spill(own):
            log.warning("write-behind: %s; %d hit(s) kept on disk for the next worker", why, held)
            return 0
        log.error("write-behind: %s; %d hit(s) not written", why, held)
        return held
