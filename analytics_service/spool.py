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

A file whose batches may have been counted already (sent without an answer) and were
first sent longer ago than Redis remembers a writer's batches (`claim`'s `hold_before`) is
held rather than written: sent again, they would count twice. It is renamed `.held`,
logged, counted in `analytics_spool_held_hits_total`, and left for the operator, who
writes it anyway with `analytics-service spool release` (`release`) or removes it.

A worker stopped before it could write a file it took lets the file stay, its record
with it: the next worker takes up where it left off. (It used to write the batches left to
a file of its own and then remove the first: a crash of the machine between the two left
both, and a site's batches beyond its last 16 counted twice.) The record also notes each
batch as it is first sent, so that the next worker sends it as a batch sent before, which
hits.lua checks against the days' history should Redis have lost its data meanwhile.

A file is written for one deployment: its hits belong in that deployment's Redis, and two
deployments (a staging and a production started from one directory, containers mounting
one volume) may share the folder. The file names the deployment by the id its Redis keeps
(`Owner`; live.py sets it once, in Redis itself, so it follows the data through a failover,
a new address or a backup, and a server that took another's address has another id); a
process takes only its own deployment's files and leaves the others', said once (`_whose`).
A Redis that lost its data gets a new id: a file it was written for before, and one an
older release wrote without an id, is told by its sites instead (the same id and creation
time in this deployment's SQL database).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgpack

from . import keys, metrics
from .logs import reason

log = logging.getLogger(__name__)

SUFFIX = ".hits"
# A file held for the operator (`claim`): no worker takes it.
HELD_SUFFIX = ".held"
# Beside a file: the indexes of its batches Redis answered, one a line, and of those sent
# (each after SENT_MARK), after the unix time (whole seconds, after TAKEN_MARK) at which the
# process that sent them took the file.
DONE_SUFFIX = ".done"
SENT_MARK = b"s"
TAKEN_MARK = b"t"
# Ends a torn line: what a note cut short holds is then no index, of a batch answered or
# sent, however it was cut ("1" of "12", "s1" of "s12").
TORN_END = b"-\n"
FORMAT = "analytics-spool"
# What `_write_whole` writes first, renamed into place once whole.
TEMPORARY = ".tmp"

# The files this process found it cannot read (path, size, modification time), which it
# leaves alone from then on: logged at each sweep, one such file was an error a minute.
_unreadable: set[tuple[Path, int, int]] = set()
# The files this process could not open or read (path, errno): logged once each.
_unopened: set[tuple[Path, int | None]] = set()
# The files this process found another deployment's (path, size, modification time, its
# own deployment's id), which it leaves alone: logged once each, not at every sweep.
_foreign: set[tuple[Path, int, int, str | None]] = set()
# The files whose deployment this process could not tell, and why (path, the error's
# type): logged once each, while the database does not answer.
_untold: set[tuple[Path, str]] = set()


@dataclass(frozen=True, slots=True)
class Owner:
    """The deployment a process takes files for (`claim`). `deployment`: the id its Redis
    keeps, None while Redis does not answer (a file with an id then waits: whose it is
    cannot be told). `marked_since`: unix time from which every file written for it holds
    that id (when Redis got it, plus the time a worker may still write the id it read
    before). `created`: the creation time (unix) of its site of an id, None for no site;
    it may raise while its database does not answer (the file then waits)."""

    deployment: str | None
    marked_since: float
    created: Callable[[str], float | None]


@dataclass(frozen=True, slots=True)
class _Body:
    """What `_read` takes from a file: its batches; when those sent before were first sent
    (None: not said); whether the operator released it (`release`); the id of the
    deployment it was written for (None: not said, an older release's file) and when."""

    batches: list[Spooled]
    sent_since: float | None
    released: bool
    deployment: str | None
    written: float


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
    # Unix time of the first send of its batches sent before (`save`): no later than
    # when Redis may have counted one of them.
    sent_since: float = 0.0
    # The record's last line is torn (a crash of the machine, a full disk): the next note
    # ends it as no index first (TORN_END), then starts on a line of its own. Ended by a
    # bare newline, "1" of "12" read as the note of batch 1, which the next process
    # skipped though Redis may never have answered it (batch 12 of another site went in
    # a round before it); and a note "3" appended to it read "13".
    torn: bool = False
    # A note could not be written (a disk that filled up): what Redis answered since is not
    # all in the record, and the file's write stops after the piece under way (buffer.py).
    missed: bool = False
    # Unix time at which this process took the file: no later than its first send of any
    # batch, which the record notes before its first note of a batch sent (`sending`).
    taken_at: float = 0.0
    dated: bool = False

    @property
    def record_path(self) -> Path:
        return self.path.with_name(self.path.name + DONE_SUFFIX)

    def answered(self, index: int) -> None:
        """Note that Redis answered the batch at `index`, before anything else is sent: a
        process killed after this leaves it out of the next one's writes."""
        self._note(b"%d\n" % index, "as written (the next worker may count it twice)")

    def sending(self, index: int) -> None:
        """Note that the batch at `index` is about to be sent for the first time. Before the
        first such note, when this process took the file: without it, the next process took
        the batch for one first sent when the file was written, and held a file taken a day
        late for the operator (`_hold`), whose batches Redis remembered."""
        taken = b"" if self.dated else TAKEN_MARK + b"%d\n" % int(self.taken_at)
        noted = self._note(
            taken + SENT_MARK + b"%d\n" % index,
            "as sent (should Redis lose its data, the next worker may count it twice)",
        )
        self.dated = self.dated or noted

    def noting(self) -> bool:
        """Whether the record holds every note made so far."""
        return not self.missed

    def _note(self, line: bytes, what: str) -> bool:
        """Unbuffered, so a kill -9 loses none of the record (the kernel has it). Whether
        the whole line was written."""
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
            return False
        return True

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


def save(
    folder: Path,
    fields: dict[str, Sequence[str]],
    batches: Sequence[Spooled],
    sent_since: float | None = None,
    deployment: str | None = None,
    now: float | None = None,
) -> Path:
    """Write `batches` to a new file of `folder`, whole or not at all (a temporary file,
    synced, then renamed); OSError when it cannot. `sent_since`: the unix time of the
    first send of those sent before (None: none was). `deployment`: the id of the
    deployment they were prepared for (`Owner`; None: not known, its sites tell), noted
    with `now` (unix time; default the host's)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
    body: dict[str, Any] = {
        "format": FORMAT,
        "fields": {kind: list(names) for kind, names in fields.items()},
        "batches": [[b.writer_id, b.seq, b.sent, b.site, b.hits] for b in batches],
    }
    # Keys an older release does not read: it reads the file as before.
    if sent_since is not None:
        body["sent_since"] = sent_since
    if deployment is not None:
        body["deployment"] = deployment
        body["written"] = time.time() if now is None else now
    path = folder / f"{name}{SUFFIX}"
    _write_whole(path, body)
    return path


def _write_whole(path: Path, body: dict[str, Any]) -> None:
    """Put `body` at `path`, whole or not at all (a temporary file, synced, then renamed)."""
    temporary = path.with_name(f".{path.name}{TEMPORARY}")
    try:
        with temporary.open("wb") as out:
            out.write(msgpack.packb(body, use_bin_type=True))
            out.flush()
            os.fsync(out.fileno())
        temporary.rename(path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def check_writable(folder: Path) -> None:
    """Raise OSError unless a file can be made in `folder` (made if missing). A file left
    nowhere: unnamed (O_TMPFILE) or removed at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def clear_abandoned(folder: Path, before: float) -> None:
    """Finish the writes of `folder` cut short (a worker killed with kill -9 mid-spill, a
    crash of the machine) whose temporary file was last changed before `before` (unix
    time): left there, no process ever looked at it again. A whole one, cut short before
    its rename, is put in its place (its hits are then written like any file's); a torn
    one is removed and logged: the hits it was keeping went with the process."""
    for temporary in folder.glob(f".*{TEMPORARY}") if folder.is_dir() else []:
        target = temporary.with_name(temporary.name[1:].removesuffix(TEMPORARY))
        try:
            if temporary.stat().st_mtime >= before:
                continue  # may be under way
            if _whole(temporary.read_bytes()):
                temporary.rename(target)
                _sync_folder(folder)
                log.warning("spool: %s, written whole by a process that died, put in place", target)
            elif target.exists():  # a copy of it being rewritten (`release`)
                temporary.unlink()
            else:
                size = temporary.stat().st_size
                temporary.unlink()
                log.error(
                    "spool: %s removed: the process that wrote it died %d bytes into it, and"
                    " the hits it was keeping were lost with it",
                    temporary,
                    size,
                )
        except FileNotFoundError:  # put in place or removed by another worker meanwhile
            continue
        except OSError as exc:
            _report(temporary, exc)


def _whole(data: bytes) -> bool:
    try:
        body = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):  # torn: "incomplete input"
        return False
    return isinstance(body, dict) and body.get("format") == FORMAT


def release(held: Path) -> Path:
    """Give a file `claim` held back to the workers, to be written whatever it may count
    twice (the operator's call: `analytics-service spool release`); its path for them.
    Its record stays beside it, under the name it goes back to."""
    if not held.name.endswith(SUFFIX + HELD_SUFFIX):
        raise ValueError(f"{held} is no held spool file (*{SUFFIX}{HELD_SUFFIX})")
    body = msgpack.unpackb(held.read_bytes(), raw=False)
    body["released"] = True
    _write_whole(held, body)  # a crash here leaves it held, released or not
    path = held.with_name(held.name.removesuffix(HELD_SUFFIX))
    held.rename(path)
    _sync_folder(path.parent)
    return path


def claim(
    folder: Path,
    fields: dict[str, Sequence[str]],
    most: int,
    passed: Callable[[Path], bool] = lambda path: False,
    hold_before: float | None = None,
    now: float | None = None,
    owner: Owner | None = None,
) -> list[Claimed]:
    """Up to `most` files of `folder` that no other process holds, locked by this one, the
    oldest first, but for those `passed` says to leave for now (a file this process failed
    to write a moment ago: it would hold back every file behind it). A file that cannot be
    read, or names other fields, is left, and logged once by each process (not at each
    sweep: live.py); so is one written for another deployment than `owner` (`_whose`;
    None: any file is taken). A file with a batch that may have been counted (sent
    before, not answered) first sent before `hold_before` (unix time) is held (`_hold`).
    `now`: this process's unix time (default the host's), noted with its sends."""
    taken_at = time.time() if now is None else now
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
        except OSError as exc:
            # Not readable by this process (another user's, a folder of that name): raised
            # from here, it stopped every file of the folder from being written.
            _report(path, exc)
            continue
        try:
            taken = _take(path, handle, fields, hold_before, taken_at, owner)
        except OSError as exc:  # the disk failed a read (EIO; ESTALE on NFS): it waits
            _report(path, exc)
            taken = None
        if taken is None:
            handle.close()
        else:
            claimed.append(taken)
    return claimed


def _take(
    path: Path,
    handle: IO[bytes],
    fields: dict[str, Sequence[str]],
    hold_before: float | None,
    taken_at: float,
    owner: Owner | None,
) -> Claimed | None:
    """The file open as `handle`, locked by this process; None when it is another's (a
    process's, or a deployment's), gone, unreadable, or held (`claim`)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another worker writes it
        return None
    stat = os.fstat(handle.fileno())
    seen = (path, stat.st_size, stat.st_mtime_ns)
    if seen in _unreadable:
        return None
    if owner is not None and (*seen, owner.deployment) in _foreign:
        return None
    body = _read(path, handle, fields)
    if body is None:
        _unreadable.add(seen)
        return None
    if owner is not None and not _whose(path, body, owner, seen):
        return None
    batches, sent_since, released = body.batches, body.sent_since, body.released
    done, sent_at, torn = _noted(path)
    # Written and removed (or held: renamed) before our lock; looked at after the record,
    # which the process that wrote the file removes after the file.
    if not _still_at(path, stat):
        return None
    # A file of an older release says nothing of when its batches were first sent: no
    # later than when it was written.
    since = stat.st_mtime if sent_since is None else min(sent_since, stat.st_mtime)
    unsure = [i for i, b in enumerate(batches) if i not in done and (b.sent or i in sent_at)]
    # A batch the record notes as sent was first sent after the file was taken by the
    # process that noted it (a record of an older release does not say when: the file's).
    first = min((since if batches[i].sent else sent_at[i] or since for i in unsure), default=0.0)
    if unsure and hold_before is not None and first < hold_before and not released:
        _hold(path, batches, unsure, first)
        return None
    try:
        record = path.with_name(path.name + DONE_SUFFIX).open("ab", buffering=0)
    except OSError as exc:
        # A volume gone read-only: sent without noting what Redis answered, the file's
        # batches were sent again by the next worker, and past the last 16 of a writer
        # counted twice (a review: 256 of 4,352).
        log.error("spool: %s waits, its record cannot be written: %s", path, reason(exc))
        return None
    sent = frozenset(sent_at)
    return Claimed(
        path, handle, record, batches, done, sent, sent_since=since, torn=torn, taken_at=taken_at
    )


def _whose(path: Path, body: _Body, owner: Owner, seen: tuple[Path, int, int]) -> bool:
    """Whether the file is `owner`'s to write. Another deployment's is logged once and
    left for it, and so is, quietly, one whose deployment cannot be told now (Redis or the
    database not answering: a later sweep tells).

    Its id names its deployment. One with another id is still this deployment's when its
    Redis got its id after the file was written (its data lost since: a restart without
    persistence, a new empty server) and the file's sites are this deployment's. A file
    without an id (an older release's) is this deployment's when its sites are. A site is
    this deployment's when its database has a site of that id created at the same time
    (to the microsecond): another deployment's `demo` was created at another. The ids
    alone tell apart a staging made from a copy of production's database, whose sites are
    production's, as long as its Redis got its id before production's file was written."""
    if body.deployment is not None and body.deployment == owner.deployment:
        return True
    if body.deployment is not None and owner.deployment is None:
        return False  # which deployment this process is, is not known yet
    if body.deployment is not None and body.written >= owner.marked_since:
        why = f"written for the deployment whose Redis has id {body.deployment}"
    else:
        ours = _has_our_sites(path, body.batches, owner)
        if ours is None:
            return False  # cannot be told now: a later sweep tells
        if ours:
            return True
        why = "none of its sites is this deployment's (no site of its id created then)"
        if body.deployment is not None:
            why += f"; written for the deployment whose Redis had id {body.deployment}"
    _foreign.add((*seen, owner.deployment))
    sites = sorted({str(batch.site.get("id")) for batch in body.batches})
    log.warning(
        "spool: %s holds %d hit(s) of another deployment (%s; sites %s, written %s): left for"
        " it. This deployment's Redis has id %s (GET %s)",
        path,
        sum(len(batch.hits) for batch in body.batches),
        why,
        ", ".join(sites),
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(body.written or seen[2] / 1e9)),
        owner.deployment,
        keys.DEPLOYMENT,
    )
    return False


def _has_our_sites(path: Path, batches: list[Spooled], owner: Owner) -> bool | None:
    """Whether a site of `batches` (of the file at `path`) is the site of that id of
    `owner`'s database; None, logged once, while the database cannot say."""
    try:
        for site_id, created in {(b.site.get("id"), b.site.get("created")) for b in batches}:
            if not isinstance(site_id, str) or not isinstance(created, (int, float)):
                continue
            ours = owner.created(site_id)
            if ours is not None and round(ours, 6) == round(created, 6):
                return True
    except Exception as exc:  # the database does not answer (any driver's error)
        if (path, type(exc).__name__) not in _untold:
            _untold.add((path, type(exc).__name__))
            log.warning("spool: %s waits: whose it is cannot be told now: %s", path, reason(exc))
        return None
    return False


def _report(path: Path, exc: OSError) -> None:
    """Log that `path` cannot be read now, once per process and cause."""
    if (path, exc.errno) not in _unopened:
        _unopened.add((path, exc.errno))
        log.error("spool: %s cannot be read, and waits: %s", path, reason(exc))


def _still_at(path: Path, stat: os.stat_result) -> bool:
    """Whether the file opened as `path` (`stat`) is still there under that name."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    return stat.st_nlink > 0 and (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino)


def _hold(path: Path, batches: list[Spooled], unsure: list[int], since: float) -> None:
    """Set aside a file (locked by this process) whose `unsure` batches Redis may have
    counted when no record of it is left there to say so: renamed, so that no worker takes
    it, and logged and counted once, for the operator."""
    held = path.with_name(path.name + HELD_SUFFIX)
    hits = sum(len(b.hits) for b in batches)
    try:
        path.rename(held)
        _sync_folder(path.parent)
    except OSError as exc:
        log.error("spool: cannot hold %s, which waits: %s", path, reason(exc))
        return
    metrics.spool_held(hits)
    log.error(
        "spool: %s held, %d hit(s) not written: %d of its batches (%d hit(s)) may have been"
        " counted already, first sent %s, longer ago than Redis remembers a writer's"
        " batches; written now, those would count twice. To write it anyway: analytics-"
        "service spool release %s; else remove it and its record (%s)",
        held,
        hits,
        len(unsure),
        sum(len(batches[i].hits) for i in unsure),
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)),
        held,
        path.name + DONE_SUFFIX,
    )


def _oldest_first(folder: Path) -> list[Path]:
    """The files of `folder`, the oldest first: a worker stopped again leaves its file,
    which then waits behind no newer one."""
    paths = []
    for path in folder.glob(f"*{SUFFIX}") if folder.is_dir() else []:
        try:
            paths.append((path.stat().st_mtime, path.name, path))
        except FileNotFoundError:  # written and removed meanwhile
            continue
        except OSError as exc:  # a link to nowhere it can reach: the others still go
            _report(path, exc)
    return [path for *_, path in sorted(paths)]


def waiting(folder: Path) -> int:
    """How many files of `folder` wait to be written (held ones not included)."""
    return sum(1 for _ in folder.glob(f"*{SUFFIX}")) if folder.is_dir() else 0


def _noted(path: Path) -> tuple[frozenset[int], dict[int, float | None], bool]:
    """The indexes processes that held `path` noted as answered; those noted as sent, each
    with the time the process that sent it took the file (None when its record does not
    say: an older release's); and whether its last line is torn. A torn line is left out,
    and stays out once the next note ends it (TORN_END): that batch is the site's latest,
    which hits.lua recognises, or was not sent yet."""
    try:
        *lines, last = path.with_name(path.name + DONE_SUFFIX).read_bytes().split(b"\n")
    except FileNotFoundError:
        return frozenset(), {}, False
    sent: dict[int, float | None] = {}
    taken_at: float | None = None
    for line in lines:
        value = line[1:]
        if line.startswith(TAKEN_MARK) and value.isdigit():
            taken_at = float(value)
        elif line.startswith(SENT_MARK) and value.isdigit():
            sent.setdefault(int(value), taken_at)
    return frozenset(int(line) for line in lines if line.isdigit()), sent, last != b""


def _read(path: Path, handle: IO[bytes], fields: dict[str, Sequence[str]]) -> _Body | None:
    """What the file holds (`_Body`); None, logged, when unreadable."""
    try:
        body = msgpack.unpackb(handle.read(), raw=False)
        if body["format"] != FORMAT:
            raise ValueError(f"not a spool file: {body['format']!r}")
        if body["fields"] != {kind: list(names) for kind, names in fields.items()}:
            raise ValueError(f"another release's fields: {body['fields']}")
        batches = [Spooled(*batch) for batch in body["batches"]]
        sent_since = body.get("sent_since")
        if sent_since is not None and not isinstance(sent_since, (int, float)):
            raise TypeError(f"sent_since: {sent_since!r}")
        deployment, written = body.get("deployment"), body.get("written", 0.0)
        if not isinstance(deployment, (str, type(None))) or not isinstance(written, (int, float)):
            raise TypeError(f"deployment: {deployment!r}, written: {written!r}")
        return _Body(batches, sent_since, body.get("released") is True, deployment, written)
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
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
