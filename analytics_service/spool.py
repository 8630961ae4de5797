"""Hits a stopping worker could not write, kept on disk for the next worker to write.

A worker stopped (a deploy, `docker compose stop`) while Redis is away drains its buffer for
half the graceful timeout; what is still there then used to be lost. It is written here
instead, one file per stop, and the next worker that starts on the folder (or a running
worker's sweep, within a minute) writes it to Redis, batch by batch as it was prepared:
each batch keeps its writer's id and number, so one the stopped worker had sent without
hearing back is recognised by hits.lua and not counted twice (live.py).

A file names the fields of a hit and of a site it holds. A release whose hits or sites have
other fields leaves the file where it is and logs it, rather than read it wrongly. A worker
takes a file with an exclusive `flock`, so two workers never write the same file, and one
killed while writing it leaves it to the next (the lock goes with the process). The
batches Redis answered are noted as they are, in a record beside the file (`.done`), which
the next worker skips: hits.lua recognises only a writer's last 16 batches per site, so the
file's earlier ones, written again from its start, would count twice.

A worker stopped before it could write a file it took lets the file stay, its record
with it: the next worker takes up where it left off. (It used to write the batches left to
a file of its own and then remove the first: a crash of the machine between the two left
both, and a site's batches beyond its last 16 counted twice.) The record also notes each
batch as it is first sent, so that the next worker sends it as a batch sent before, which
hits.lua checks against the days' history should Redis have lost its data meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgpack

from .logs import reason

log = logging.getLogger(__name__)

SUFFIX = ".hits"
# Beside a file: the indexes of its batches Redis answered, one a line, and of those sent
# (each after SENT_MARK).
DONE_SUFFIX = ".done"
SENT_MARK = b"s"
# Ends a torn line: what a note cut short holds is then no index, of a batch answered or
# sent, however it was cut ("1" of "12", "s1" of "s12").
TORN_END = b"-\n"
FORMAT = "analytics-spool"

# The files this process found it cannot read (path, size, modification time), which it
# leaves alone from then on: logged at each sweep, one such file was an error a minute.
_unreadable: set[tuple[Path, int, int]] = set()


@dataclass(frozen=True, slots=True)
class Spooled:
    """One prepared batch: its writer's id and number for it, whether it was sent, its
    site's fields, and its hits' fields (everything but the site), in order."""

    writer_id: str
    seq: int
    sent: bool
    site: dict[str, Any]
    hits: list[list[Any]]


@dataclass(slots=True)
class Claimed:
    """A file this process holds the lock of, its record open for notes, and what it holds:
    its batches, and the indexes of those a process that held it before saw answered (not
    to be sent again) and of those it sent."""

    path: Path
    handle: IO[bytes]
    record: IO[bytes]
    batches: list[Spooled]
    done: frozenset[int] = frozenset()
    sent: frozenset[int] = frozenset()
    # The record's last line is torn (a crash of the machine, a full disk): the next note
    # ends it as no index first (TORN_END), then starts on a line of its own. Ended by a
    # bare newline, "1" of "12" read as the note of batch 1, which the next process
    # skipped though Redis may never have answered it (batch 12 of another site went in
    # a round before it); and a note "3" appended to it read "13".
    torn: bool = False
    # A note could not be written (a disk that filled up): what Redis answered since is not
    # all in the record, and the file's write stops after the piece under way (buffer.py).
    missed: bool = False

    @property
    def record_path(self) -> Path:
        return self.path.with_name(self.path.name + DONE_SUFFIX)

    def answered(self, index: int) -> None:
        """Note that Redis answered the batch at `index`, before anything else is sent: a
        process killed after this leaves it out of the next one's writes."""
        self._note(b"%d\n" % index, "as written (the next worker may count it twice)")

    def sending(self, index: int) -> None:
        """Note that the batch at `index` is about to be sent for the first time."""
        self._note(
            SENT_MARK + b"%d\n" % index,
            "as sent (should Redis lose its data, the next worker may count it twice)",
        )

    def noting(self) -> bool:
        """Whether the record holds every note made so far."""
        return not self.missed

    def _note(self, line: bytes, what: str) -> None:
        """Unbuffered, so a kill -9 loses none of the record (the kernel has it)."""
        if self.torn:
            line = TORN_END + line
        try:
            self.torn = True  # until the whole line is written
            if self.record.write(line) != len(line):
                raise OSError(errno.ENOSPC, "the disk took part of the line")
            self.torn = False
        except OSError as exc:
            self.missed = True
            log.error("spool: cannot note a batch of %s %s: %s", self.path, what, reason(exc))

    def unreadable(self) -> None:
        """Let the file go, left where it is, and leave it alone from now on in this process:
        it holds what this release cannot take."""
        stat = os.fstat(self.handle.fileno())
        _unreadable.add((self.path, stat.st_size, stat.st_mtime_ns))
        self.release(written=False)

    def release(self, *, written: bool) -> None:
        """Let the file go: removed once its hits are written, then its record (removed
        first, the file would be written again whole); else left, record and all, for the
        next worker."""
        try:
            if written:
                self.path.unlink(missing_ok=True)
                self.record_path.unlink(missing_ok=True)
        except OSError as exc:  # a volume gone read-only: the record keeps its batches out
            log.error("spool: cannot remove %s, whose hits are written: %s", self.path, reason(exc))
        finally:
            self.record.close()
            self.handle.close()


def save(folder: Path, fields: dict[str, Sequence[str]], batches: Sequence[Spooled]) -> Path:
    """Write `batches` to a new file of `folder`, whole or not at all (a temporary file,
    synced, then renamed); OSError when it cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
    temporary, path = folder / f".{name}.tmp", folder / f"{name}{SUFFIX}"
    body = {
        "format": FORMAT,
        "fields": {kind: list(names) for kind, names in fields.items()},
        "batches": [[b.writer_id, b.seq, b.sent, b.site, b.hits] for b in batches],
    }
    try:
        with temporary.open("wb") as out:
            out.write(msgpack.packb(body, use_bin_type=True))
            out.flush()
            os.fsync(out.fileno())
        temporary.rename(path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(folder)
    return path


def claim(
    folder: Path,
    fields: dict[str, Sequence[str]],
    most: int,
    passed: Callable[[Path], bool] = lambda path: False,
) -> list[Claimed]:
    """Up to `most` files of `folder` that no other process holds, locked by this one, the
    oldest first, but for those `passed` says to leave for now (a file this process failed
    to write a moment ago: it would hold back every file behind it). A file that cannot be
    read, or names other fields, is left, and logged once by each process (not at each
    sweep: live.py)."""
    claimed: list[Claimed] = []
    for path in _oldest_first(folder):
        if len(claimed) >= most:
            break
        if passed(path):
            continue
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # written by the process that held it meanwhile
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another worker writes it
            handle.close()
            continue
        stat = os.fstat(handle.fileno())
        seen = (path, stat.st_size, stat.st_mtime_ns)
        # Written and removed before our lock, or found unreadable before.
        if stat.st_nlink == 0 or seen in _unreadable:
            handle.close()
            continue
        batches = _read(path, handle, fields)
        if batches is None:
            _unreadable.add(seen)
            handle.close()
            continue
        try:
            record = path.with_name(path.name + DONE_SUFFIX).open("ab", buffering=0)
        except OSError as exc:
            # A volume gone read-only: sent without noting what Redis answered, the file's
            # batches were sent again by the next worker, and past the last 16 of a writer
            # counted twice (a review: 256 of 4,352).
            log.error("spool: %s waits, its record cannot be written: %s", path, reason(exc))
            handle.close()
            continue
        claimed.append(Claimed(path, handle, record, batches, *_noted(path)))
    return claimed


def _oldest_first(folder: Path) -> list[Path]:
    """The files of `folder`, the oldest first: a worker stopped again leaves its file,
    which then waits behind no newer one."""
    paths = []
    for path in folder.glob(f"*{SUFFIX}") if folder.is_dir() else []:
        with contextlib.suppress(FileNotFoundError):  # written and removed meanwhile
            paths.append((path.stat().st_mtime, path.name, path))
    return [path for *_, path in sorted(paths)]


def _noted(path: Path) -> tuple[frozenset[int], frozenset[int], bool]:
    """The indexes processes that held `path` noted as answered, and as sent, and whether
    its last line is torn. A torn line is left out, and stays out once the next note ends
    it (TORN_END): that batch is the site's latest, which hits.lua recognises, or was not
    sent yet."""
    try:
        *lines, last = path.with_name(path.name + DONE_SUFFIX).read_bytes().split(b"\n")
    except FileNotFoundError:
        return frozenset(), frozenset(), False
    sent = (line.removeprefix(SENT_MARK) for line in lines if line.startswith(SENT_MARK))
    return (
        frozenset(int(line) for line in lines if line.isdigit()),
        frozenset(int(line) for line in sent if line.isdigit()),
        last != b"",
    )


def _read(path: Path, handle: IO[bytes], fields: dict[str, Sequence[str]]) -> list[Spooled] | None:
    try:
        body = msgpack.unpackb(handle.read(), raw=False)
        if body["format"] != FORMAT:
            raise ValueError(f"not a spool file: {body['format']!r}")
        if body["fields"] != {kind: list(names) for kind, names in fields.items()}:
            raise ValueError(f"another release's fields: {body['fields']}")
        return [Spooled(w, seq, sent, site, hits) for w, seq, sent, site, hits in body["batches"]]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        log.error(
            "spool: %s cannot be read by this release and is left where it is: %s",
            path,
            reason(exc),
        )
        return None


def _sync_folder(folder: Path) -> None:
    """Make the rename itself survive a crash of the machine."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
