"""The stage contract, written once: items in, files + ``manifest.csv`` out, resumable.

A stage subclasses :class:`Stage` and implements :meth:`Stage.process` for one item (or
:meth:`Stage.process_stream` for batched work such as a model); :func:`run_stage` does the
rest: skipping finished items, ``--force``/``--limit``/``--workers``, a process or thread
pool, a progress bar, per-item failures recorded with a one-line reason, the manifest written
atomically (also when Ctrl-C stops the run), and the closing summary line.

Every output is written through :func:`atomic_path` (a temp file in the same folder, then
``os.replace``), so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import csv
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from tqdm.auto import tqdm

from .errors import ConfigError, ItemFailed, ItemSkipped
from .shards import FolderLock, Shard, manifest_parts, part_name

__all__ = [
    "Item", "Outcome", "Stage", "StageOptions", "Summary", "run_stage", "run_one", "attempt",
    "outcome_from_exception", "ITEM_ERRORS", "list_items", "atomic_path", "sigint_deferred",
    "shutdown_pools", "prefetch", "drain", "resolve_workers", "default_workers", "require_binaries",
    "atomic_write_text", "read_manifest", "write_manifest", "write_settings", "MANIFEST",
    "BASE_COLUMNS", "recorded_float", "reason_kind", "last_manifest_write",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
SETTINGS = "settings.yaml"
BASE_COLUMNS = ("id", "label", "group", "source", "output", "status", "reason")
Status = Literal["ok", "skipped", "failed"]
T = TypeVar("T")
W = TypeVar("W")

_TEMP_RE = re.compile(r"^\..+\.tmp\d+(\.[^./]+)?$")
#: Exceptions that mean "this item's data is bad", not "this code is wrong": recorded in the
#: manifest, never raised. Batched stages catch these around one item (or one batch) too.
ITEM_ERRORS = (ItemSkipped, ItemFailed, OSError, ValueError, RuntimeError, EOFError)


@dataclass(frozen=True)
class StageOptions:
    """The run-time flags every stage takes besides the config (``--force``, ``--limit``,
    ``--workers``, and ``--quiet`` as ``progress=False``)."""

    force: bool = False
    limit: int | None = None
    workers: int | None = None   # None: the stage's config value
    progress: bool = True
    shard: Shard | None = None   # --shard K/N: only the items of this shard


def require_binaries(*names: str) -> None:
    """Stop with a clear message when an external program (e.g. ffmpeg) is not installed."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not found on PATH: install ffmpeg (Debian/Ubuntu: "
            "sudo apt-get install ffmpeg; macOS: brew install ffmpeg; conda: conda install "
            "-c conda-forge ffmpeg)")


def resolve_workers(option: int | None, configured: int) -> int:
    """``--workers`` when given, else the config value; either way 0 means one per CPU core."""
    return default_workers(configured if option is None else option)


def default_workers(configured: int) -> int:
    """``configured`` when positive, else the number of CPU cores this process may use."""
    if configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Item:
    """One unit of work: a source file (or, for stage 1, a CSV row) with a stable id.

    ``id`` is VGGSound's ``<ytid>_<start:06d>`` for clips, or the file name's stem for a
    user's own files; ``upstream`` is the previous stage's manifest row, if there was one.
    """

    id: str
    group: str
    source: Path | str
    label: str = ""
    upstream: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    """What happened to one item: a status, a one-line reason, and stage-specific columns."""

    status: Status
    reason: str = ""
    fields: dict[str, Any] = field(default_factory=dict)


class Stage:
    """Base class of a pipeline stage. Subclasses set the class attributes and ``process``.

    Attributes
    ----------
    name : str
        Shown on the progress bar and in the summary line.
    suffix : str
        Extension of the output file, e.g. ``".wav"``; output is ``<group>/<id><suffix>``.
    columns : tuple of str
        Stage-specific manifest columns, after :data:`BASE_COLUMNS`.
    executor : {"process", "thread", "stream"}
        ``process``/``thread``: :meth:`process` runs in a pool of ``workers``; ``stream``:
        :meth:`process_stream` gets all items at once in this process (batched models).
    """

    name: ClassVar[str] = "stage"
    unit: ClassVar[str] = "file"
    suffix: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()
    executor: ClassVar[Literal["process", "thread", "stream"]] = "process"
    #: Whether an output found without a manifest row (the run was killed before it wrote
    #: the row) counts as done. Only for stages whose columns can be left empty and whose
    #: work is expensive to redo (downloads); others redo the item to fill their columns.
    adopt_orphans: ClassVar[bool] = False

    def output_path(self, item: Item) -> Path:
        """Output path relative to the output folder."""
        return Path(item.group) / f"{item.id}{self.suffix}"

    def is_done(self, output: Path, row: Mapping[str, str] | None) -> bool:
        """Whether ``output`` is a valid finished result (so the item can be skipped)."""
        return output.is_file() and output.stat().st_size > 0

    def discard(self, output: Path) -> None:
        """Remove an earlier run's output for an item that is now skipped or failed.

        Called by :func:`run_stage`, so a ``--force`` rerun never leaves a stale file beside
        a manifest row that says it is not there. Stages with more than one file per item
        extend it; a stage whose outputs are costly to remake may keep them.
        """
        output.unlink(missing_ok=True)

    def item_fields(self, item: Item) -> dict[str, Any]:
        """Manifest columns known before any work (e.g. a clip's CSV row): every row of the
        item gets them, whatever its outcome, adopted orphans included."""
        return {}

    def should_retry(self, row: Mapping[str, str]) -> bool:
        """Whether an item that failed or was skipped in an earlier run is tried again.

        The default retries failures and keeps skips (a skip is a decision about the item's
        content). Stages override it, e.g. to revisit a skip when its threshold has changed.
        """
        return row.get("status") == "failed"

    def process(self, item: Item, output: Path) -> dict[str, Any]:
        """Make ``output`` (absolute path) from ``item``; return the stage-specific columns.

        Raise :class:`ItemFailed` or :class:`ItemSkipped` with a one-line reason for bad
        items. Write ``output`` only through :func:`atomic_path`.
        """
        raise NotImplementedError

    def process_stream(self, work: list[tuple[Item, Path]]) -> Iterator[tuple[Item, Outcome]]:
        """Process all of ``work`` and yield each item's outcome as it finishes.

        The default runs :meth:`process` one item at a time; batched stages override it.
        """
        for item, output in work:
            yield item, run_one(self, item, output)


def run_one(stage: Stage, item: Item, output: Path) -> Outcome:
    """Run ``stage.process`` on one item, turning an item-level error into an Outcome."""
    result = attempt(stage.process, item, output)
    return result if isinstance(result, Outcome) else Outcome("ok", "", result or {})


def attempt(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | Outcome:
    """``fn(*args, **kwargs)``, or the Outcome of the item error it raised (:data:`ITEM_ERRORS`).

    The one place where an item's exception becomes its manifest outcome; any other
    exception (a bug) propagates.
    """
    try:
        return fn(*args, **kwargs)
    except ITEM_ERRORS as exc:
        log.debug("%s: %s", getattr(fn, "__qualname__", fn), type(exc).__name__,
                  exc_info=True)
        return outcome_from_exception(exc)


def outcome_from_exception(exc: BaseException) -> Outcome:
    """The Outcome an item-level exception stands for (one of :data:`ITEM_ERRORS`).

    ``ItemSkipped`` -> skipped, ``ItemFailed`` -> failed, each with its message and its
    manifest ``fields``; any other item error -> failed with the exception's type name in
    front of its one-line message.
    """
    if isinstance(exc, ItemSkipped):
        return Outcome("skipped", _one_line(exc), dict(exc.fields))
    if isinstance(exc, ItemFailed):
        return Outcome("failed", _one_line(exc), dict(exc.fields))
    return Outcome("failed", f"{type(exc).__name__}: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success move it into place atomically.

    The temp name keeps the extension (ffmpeg and soundfile pick the format from it). On any
    exception, Ctrl-C included, the temp file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.tmp{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _remove_stale_temps(folder: Path, *, before: float) -> int:
    """Delete temp files and folders a killed run left behind (Ctrl-C cleans up; SIGKILL
    cannot): ``.<name>.tmp<pid>[.ext]``, as :func:`atomic_path` names files and stage 1 names
    its per-clip download folders.

    Only those last written before ``before`` (a file time of the same filesystem): a run
    that started since then writes its own.
    """
    count = 0
    for path in sorted(folder.rglob(".*.tmp*")):
        if not _TEMP_RE.match(path.name):
            continue
        with contextlib.suppress(FileNotFoundError):  # finished (renamed) or removed meanwhile
            if path.stat().st_mtime >= before:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict[str, dict[str, str]]:
    """The rows of ``folder/manifest.csv`` keyed by id (empty when there is none).

    Rows that shards wrote to their own parts (:mod:`animalvae.shards`) are merged in, the
    most recently written part last, so a reader sees every shard's work.
    """
    rows = _read_manifest_file(Path(folder) / MANIFEST)
    for part in manifest_parts(folder):
        rows.update(_read_manifest_file(part))
    return rows


def last_manifest_write(folder: Path) -> float | None:
    """When a run last wrote ``folder``'s manifest or a shard's part (epoch s; None: never)."""
    times = [p.stat().st_mtime for p in [Path(folder) / MANIFEST, *manifest_parts(folder)]
             if p.is_file()]
    return max(times, default=None)


def _read_manifest_file(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "id" not in reader.fieldnames:
                raise ConfigError(f"{path}: not a manifest (no 'id' column); move it away or "
                                  "rerun the stage that wrote it with --force")
            return {row["id"]: row for row in reader if row.get("id")}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a readable manifest ({exc}); move it away or rerun "
                          "the stage that wrote it with --force") from None


def write_manifest(folder: Path, rows: Iterable[Mapping[str, Any]],
                   columns: tuple[str, ...] = (), *, shard: Shard | None = None) -> Path:
    """Write ``rows`` (sorted by group, id) to ``folder/manifest.csv`` atomically.

    With ``shard``, only the shard's own rows, to its part (``manifest.shard-K-of-N.csv``);
    without, every row, and the parts (read into ``rows`` by :func:`read_manifest`) go.
    """
    path = Path(folder) / (MANIFEST if shard is None else part_name(shard))
    if shard is not None:
        rows = [r for r in rows if shard.owns(str(r.get("id", "")))]
    header = list(BASE_COLUMNS) + [c for c in columns if c not in BASE_COLUMNS]
    ordered = sorted(rows, key=lambda r: (str(r.get("group", "")), str(r.get("id", ""))))
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in ordered:
            writer.writerow({k: _cell(row.get(k, "")) for k in header})
    if shard is None:
        for part in manifest_parts(folder):
            part.unlink(missing_ok=True)
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def write_settings(folder: Path, settings: Mapping[str, Any]) -> None:
    """Record the settings in effect beside a stage's outputs (``settings.yaml``)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(folder) / SETTINGS,
                      yaml.safe_dump(dict(settings), sort_keys=False, allow_unicode=True))


def list_items(folder: Path, extensions: Iterable[str], *, what: str = "input") -> list[Item]:
    """List the work items in a previous stage's output folder, or in a plain folder of files.

    With a ``manifest.csv``, its ``ok`` rows whose output exists are items (the row rides
    along as ``Item.upstream``). Files under ``<folder>/<group>/`` that the manifest does not
    mention are items too, so users can bring their own data to any stage: the sub-folder
    names the group and the file name (without extension) is the id.

    Raises
    ------
    ConfigError
        When the folder is missing or holds no usable file.
    """
    folder = Path(folder)
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    if not folder.is_dir():
        raise ConfigError(f"{what} folder {folder} does not exist (run the previous stage "
                          "first, or pass --input DIR)")
    rows = read_manifest(folder)
    items: dict[str, Item] = {}
    for row in rows.values():
        if row.get("status") != "ok" or not row.get("output"):
            continue
        path = folder / row["output"]
        if path.is_file() and path.suffix.lower() in exts:
            items[row["id"]] = Item(row["id"], row.get("group") or path.parent.name, path,
                                    row.get("label") or row.get("group", ""), row)
    collisions: list[str] = []
    for path in sorted(folder.glob("*/*")):
        if (path.is_file() and path.suffix.lower() in exts and not path.name.startswith(".")
                and path.stem not in rows):
            if path.stem in items:  # ids name outputs in every later stage: one per id
                collisions.append(f"{what} folder {folder}: {items[path.stem].source} and "
                                  f"{path} have the same id {path.stem!r}; file names must "
                                  "be unique across groups")
                continue
            items[path.stem] = Item(path.stem, path.parent.name, path, path.parent.name)
    if collisions:
        raise ConfigError(collisions[:5])
    if not items:
        loose = [p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in exts]
        hint = (f"; found {len(loose)} at the top level: put them in one sub-folder per "
                f"group, e.g. {folder}/<group>/{loose[0].name}") if loose else ""
        raise ConfigError(f"{what} folder {folder} has no {'/'.join(sorted(exts))} files "
                          f"(expected <group>/<id>.<ext>, or a manifest.csv with ok rows){hint}")
    return sorted(items.values(), key=lambda it: (it.group, it.id))


# --------------------------------------------------------------------------------------------
# Running a stage
# --------------------------------------------------------------------------------------------

@dataclass
class Summary:
    """Counts of one stage run: new results, earlier results kept, and the common failures."""

    name: str
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    already_done: int = 0       # ok in an earlier run, output still valid
    kept_unfinished: int = 0    # skipped or failed in an earlier run, not retried
    reasons: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0
    manifest: Path | None = None

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        if outcome.status != "ok" and outcome.reason:
            self.reasons[reason_kind(outcome.reason)] += 1

    def line(self) -> str:
        """``ok N · skipped N · failed N`` (this run), earlier results kept, common reasons."""
        text = f"{self.name}: ok {self.ok} · skipped {self.skipped} · failed {self.failed}"
        if self.already_done:
            text += f" · {self.already_done} done earlier"
        if self.kept_unfinished:
            text += f" · {self.kept_unfinished} earlier skips/failures kept (--force redoes them)"
        if self.reasons:
            top = ", ".join(f"{r} ×{n}" for r, n in self.reasons.most_common(3))
            text += f" (top reasons: {top})"
        return text + f" in {self.seconds:.1f} s"

    @property
    def exit_code(self) -> int:
        """1 when nothing usable came out and something failed (now or before), else 0."""
        usable = self.ok or self.already_done or self.skipped
        return 1 if not usable and (self.failed or self.kept_unfinished) else 0


def reason_kind(reason: str) -> str:
    """Group reasons that differ only in numbers or quoted names (``too short (0.4 s)``)."""
    kind = re.sub(r"\(.*?\)|'.*?'|\d+(\.\d+)?", "…", reason)
    kind = re.sub(r"…(\s*…)+", "…", kind)  # "not found (…) (…)" reads "not found …"
    return kind.strip()[:80]


def run_stage(stage: Stage, items: Iterable[Item], output_dir: Path, *, force: bool = False,
              limit: int | None = None, workers: int = 1, progress: bool = True,
              shard: Shard | None = None, settings: Mapping[str, Any] | None = None,
              prepare: Callable[[], None] | None = None) -> Summary:
    """Run ``stage`` over ``items``, writing into ``output_dir`` and its ``manifest.csv``.

    Parameters
    ----------
    stage : Stage
    items : iterable of Item
    output_dir : Path
        Outputs go to ``output_dir / stage.output_path(item)``.
    force : bool
        Redo items that are already done (or were skipped, or failed for good).
    limit : int or None
        Process at most this many items that still need work (successive runs continue).
    workers : int
        Pool size for ``process``/``thread`` stages (1 = in this process).
    progress : bool
        Show a tqdm progress bar.
    shard : Shard or None
        Only the items of this shard, with its own manifest part (:mod:`animalvae.shards`).
    settings : mapping or None
        The settings in effect, written to ``settings.yaml`` once the folder is held.
    prepare : callable or None
        Called once the folder is held, before any item: checks against and writes to the
        files the folder's items share (stage 4's ``normalizer.json``). With ``settings``,
        a run refused because another one works there has changed nothing.

    Returns
    -------
    Summary
        Also logged as the closing line. Ctrl-C writes the manifest of finished items
        and re-raises ``KeyboardInterrupt``.

    Raises
    ------
    ConfigError
        When another live run works in ``output_dir`` on items this run would do too.
    """
    output_dir = Path(output_dir)
    with FolderLock(output_dir, shard) as lock:
        if prepare is not None:
            prepare()
        if settings is not None:
            write_settings(output_dir, settings)
        if shard is not None:
            items = [item for item in items if shard.owns(item.id)]
        # Other runs' temporary files are work in progress: only a run that was alone when
        # it took the folder removes leftovers, and only those older than its lock.
        if lock.alone and (stale := _remove_stale_temps(output_dir, before=lock.taken_at)):
            log.info("removed %d temporary file(s) left by an interrupted run", stale)
        return _run_stage(stage, items, output_dir, force=force, limit=limit, workers=workers,
                          progress=progress, shard=shard)


def _run_stage(stage: Stage, items: Iterable[Item], output_dir: Path, *, force: bool,
               limit: int | None, workers: int, progress: bool,
               shard: Shard | None) -> Summary:
    rows = read_manifest(output_dir)
    summary = Summary(stage.name if shard is None else f"{stage.name} (shard {shard})")
    start = time.monotonic()

    todo: list[tuple[Item, Path]] = []
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            log.warning("%s: duplicate id %s (%s) ignored", stage.name, item.id, item.source)
            continue
        seen.add(item.id)
        rel = stage.output_path(item)
        output = output_dir / rel
        prev = rows.get(item.id)
        if not force and _keep_previous(stage, prev, output):
            if prev is None:  # output exists but the manifest lost its row (e.g. SIGKILL)
                rows[item.id] = _row(stage, item, rel, Outcome("ok"))
            if prev is None or prev.get("status") == "ok":
                summary.already_done += 1
            else:
                summary.kept_unfinished += 1
            continue
        todo.append((item, output))
    if limit is not None:
        todo = todo[:limit]
    if summary.already_done:
        log.info("%s: %d item(s) done in an earlier run, kept (use --force to redo them)",
                 stage.name, summary.already_done)

    bar = tqdm(total=len(todo), desc=stage.name, unit=stage.unit,
               disable=not (progress and todo), dynamic_ncols=True)

    def record(item: Item, outcome: Outcome) -> None:
        rel = stage.output_path(item)
        rows[item.id] = _row(stage, item, rel, outcome)
        summary.add(outcome)
        if outcome.status != "ok":
            with contextlib.suppress(OSError):  # e.g. a read-only folder: nothing to remove
                stage.discard(output_dir / rel)
        if outcome.status == "failed":
            log.warning("%s: %s failed: %s", stage.name, item.id, outcome.reason)
        else:
            log.debug("%s: %s %s %s", stage.name, item.id, outcome.status, outcome.reason)

    last_flush = time.monotonic()
    late: list[tuple[Item, Outcome]] = []
    try:
        for item, outcome in _execute(stage, todo, workers, late):
            record(item, outcome)
            bar.update(1)
            bar.set_postfix(ok=summary.ok, skipped=summary.skipped, failed=summary.failed,
                            refresh=False)
            if time.monotonic() - last_flush > 10:  # a crash loses at most 10 s of rows
                write_manifest(output_dir, rows.values(), stage.columns, shard=shard)
                last_flush = time.monotonic()
    finally:
        with sigint_deferred():  # a second Ctrl-C must not lose the manifest
            for item, outcome in late:
                record(item, outcome)
            bar.close()
            summary.seconds = time.monotonic() - start
            summary.manifest = write_manifest(output_dir, rows.values(), stage.columns,
                                              shard=shard)
    # The closing line is shown even with --quiet (the scripts' promise: "... and the summary").
    log.log(logging.INFO if log.isEnabledFor(logging.INFO) else logging.WARNING, "%s",
            summary.line())
    return summary


def _keep_previous(stage: Stage, prev: Mapping[str, str] | None, output: Path) -> bool:
    """Whether an earlier result stands: a valid output, or a skip/failure not to be retried."""
    if prev is None:
        return stage.adopt_orphans and stage.is_done(output, None)
    if prev.get("status") == "ok":
        return stage.is_done(output, prev)
    return not stage.should_retry(prev)


def recorded_float(row: Mapping[str, str], column: str) -> float | None:
    """A number an earlier run recorded in a manifest ``column`` (None when absent or not a
    number): how a stage reads back the fact that decided a skip or a failure."""
    try:
        return float(row.get(column) or "")
    except ValueError:
        return None


def _row(stage: Stage, item: Item, rel: Path, outcome: Outcome) -> dict[str, Any]:
    return {"id": item.id, "label": item.label, "group": item.group, "source": str(item.source),
            "output": rel.as_posix() if outcome.status == "ok" else "",
            "status": outcome.status, "reason": outcome.reason, **stage.item_fields(item),
            **outcome.fields}


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM (which the scripts treat alike) for the duration (in the main
    thread; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def shutdown_pools(*pools: cf.Executor) -> None:
    """Stop pools after Ctrl-C or an error: queued work is dropped, running work finishes
    (atomic writes complete), and a second Ctrl-C is ignored meanwhile (interrupting a
    pool's shutdown hangs it)."""
    with sigint_deferred():
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)


def prefetch(pool: cf.Executor, fn: Callable[[W], T], work: Iterable[W], *,
             ahead: int) -> Iterator[tuple[W, T]]:
    """``(w, fn(w))`` for each ``w`` of ``work``, in order, with at most ``ahead`` in flight.

    Bounded read-ahead: results wait for the consumer, so memory holds at most ``ahead``
    of them. ``fn`` raising propagates at its turn.
    """
    pending: collections.deque[tuple[W, cf.Future]] = collections.deque()
    queue = iter(work)
    for w in queue:
        pending.append((w, pool.submit(fn, w)))
        if len(pending) >= ahead:
            break
    while pending:
        w, future = pending.popleft()
        for nxt in queue:
            pending.append((nxt, pool.submit(fn, nxt)))
            break
        yield w, future.result()


def drain(pending: dict[cf.Future, W], *, keep: int) -> Iterator[tuple[W, cf.Future]]:
    """Pop and yield the finished futures of ``pending``, waiting until at most ``keep`` remain.

    Bounded write-behind: a producer that calls this after each submission never has more
    than ``keep`` tasks (and the data they hold) in flight; ``keep=0`` waits for all.
    """
    while True:
        for future in [f for f in pending if f.done()]:
            yield pending.pop(future), future
        if len(pending) <= keep:
            return
        cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)


def _ignore_sigint() -> None:
    # Pool workers finish their current item on Ctrl-C, or on the SIGTERM a scheduler sends to
    # every process of a job; the parent stops handing out new ones.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _execute(stage: Stage, todo: list[tuple[Item, Path]], workers: int,
             finished: list[tuple[Item, Outcome]]) -> Iterator[tuple[Item, Outcome]]:
    """Yield each item's outcome as it completes; on interruption, items that still finished
    (pool workers complete their current item) are appended to ``finished``."""
    if not todo:
        return
    if stage.executor == "stream" or workers <= 1 or len(todo) == 1:
        yield from stage.process_stream(todo)
        return
    if stage.executor == "process":
        pool: cf.Executor = cf.ProcessPoolExecutor(workers, initializer=_ignore_sigint)
    else:
        pool = cf.ThreadPoolExecutor(workers)
    futures = {pool.submit(run_one, stage, item, out): item for item, out in todo}
    reported: set[cf.Future] = set()
    try:
        for future in cf.as_completed(futures):
            reported.add(future)
            yield futures[future], future.result()
    finally:
        shutdown_pools(pool)
        # Hand their successes to the caller, so the manifest records them too (a
        # failure at that moment may be the interruption itself: the next run retries it).
        for future in futures:
            if future not in reported and future.done() and not future.cancelled() \
                    and future.exception() is None and future.result().status == "ok":
                finished.append((futures[future], future.result()))
