"""Where a run stands: every stage's items per status, what still waits, and the top reasons.

Reads what the stages wrote (their ``manifest.csv``, merged with the parts that shards are
still writing; stage 5's ``metrics.csv``) and, for stage 1, the rows that ``download.*``
selects from ``paths.vggsound_csv``. It changes nothing, so it is safe to run beside a
multi-day run, on any machine that sees the shared output folder.

An item *waits* at a stage when the stage before it has it ``ok`` (for stage 1: the CSV
selects it) and the stage has no row for it yet.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import Config
from .errors import ConfigError
from .stage import read_manifest, reason_kind
from .training.run_folder import METRICS

__all__ = ["StageState", "collect", "status_table", "top_reasons", "training_line", "report",
           "STATUSES"]

log = logging.getLogger(__name__)

STATUSES = ("ok", "skipped", "failed")


@dataclass(frozen=True)
class StageState:
    """One stage's manifest rows and the items that reach it.

    Attributes
    ----------
    rows : DataFrame
        Columns ``id, group, status, reason``, one row per item of the manifest.
    upstream : DataFrame or None
        Columns ``id, group``: the items the stage before has ``ok`` (for stage 1, the CSV
        selection); None when unknown (stage 1 without a readable CSV).
    """

    name: str
    folder: Path
    rows: pd.DataFrame
    upstream: pd.DataFrame | None


def _frame(rows: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    columns = ["id", "group", "status", "reason"]
    frame = pd.DataFrame([{c: row.get(c, "") or "" for c in columns} for row in rows.values()],
                         columns=columns)
    return frame.astype(str)


def _selected(config: Config) -> pd.DataFrame | None:
    """``id, group`` of the clips stage 1 is asked for, or None when the CSV is unreadable."""
    from .download_plan import plan
    from .vggsound_csv import clip_id

    try:
        selected = plan(config).selected
    except ConfigError as exc:
        log.debug("stage 1's waiting items are not counted: %s", exc.problems[0])
        return None
    return pd.DataFrame([(clip_id(row.ytid, row.start_s), group) for group, row in selected],
                        columns=["id", "group"])


def collect(config: Config) -> list[StageState]:
    """Read the four stage folders of ``config.paths`` (missing ones count as empty)."""
    folders = [("1 download", config.paths.clips), ("2 extract", config.paths.audio),
               ("3 detect", config.paths.detections), ("4 features", config.paths.spectrograms)]
    states: list[StageState] = []
    upstream = _selected(config)
    for name, folder in folders:
        rows = _frame(read_manifest(folder))
        states.append(StageState(name, folder, rows, upstream))
        upstream = rows.loc[rows["status"] == "ok", ["id", "group"]]
    return states


def status_table(states: list[StageState], *, by_group: bool = False) -> pd.DataFrame:
    """Items per stage (and group) in each status: columns ``ok, skipped, failed, waiting``.

    ``waiting`` is ``<NA>`` where the items that reach a stage are not known (stage 1
    without a readable CSV).
    """
    keys = ["stage", "group"] if by_group else ["stage"]
    parts = []
    for state in states:
        parts.append(state.rows[["id", "group", "status"]].assign(stage=state.name))
        if state.upstream is not None:
            waiting = state.upstream[~state.upstream["id"].isin(set(state.rows["id"]))]
            parts.append(waiting.assign(status="waiting", stage=state.name))
    long = pd.concat(parts, ignore_index=True)
    table = (long.groupby(keys)["status"].value_counts().unstack(fill_value=0)
             .reindex(columns=[*STATUSES, "waiting"], fill_value=0).astype("Int64"))
    if not by_group:
        table = table.reindex([s.name for s in states], fill_value=0)
    unknown = [s.name for s in states if s.upstream is None]
    stage_names = table.index.get_level_values("stage")
    table.loc[stage_names.isin(unknown), "waiting"] = pd.NA
    table.columns.name = None
    return table


def top_reasons(states: list[StageState], *, n: int = 3) -> pd.DataFrame:
    """The ``n`` commonest reasons per stage among skipped and failed items.

    Reasons that differ only in numbers or quoted names count as one (``too short (…)``).

    Returns
    -------
    DataFrame
        Columns ``stage, status, reason, count``, most common first within each stage.
    """
    frames = [s.rows.assign(stage=s.name) for s in states]
    rows = pd.concat(frames) if frames else pd.DataFrame(columns=["stage", "status", "reason"])
    rows = rows[rows["status"].isin(["skipped", "failed"])]
    if rows.empty:
        return pd.DataFrame(columns=["stage", "status", "reason", "count"])
    rows = rows.assign(reason=rows["reason"].map(reason_kind))
    counts = (rows.groupby(["stage", "status", "reason"]).size().rename("count").reset_index()
              .sort_values(["stage", "count"], ascending=[True, False], kind="stable"))
    return counts.groupby("stage").head(n).reset_index(drop=True)


def training_line(run_dir: Path, *, epochs: int) -> str:
    """Stage 5 in one line: epoch, step and best validation loss from ``metrics.csv``."""
    metrics = run_dir / METRICS
    if not metrics.is_file():
        return f"5 train: not started ({run_dir})"
    with metrics.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return f"5 train: started, no epoch finished yet ({run_dir})"
    last = rows[-1]
    best = min(float(r["val_loss"]) for r in rows)
    return (f"5 train: epoch {float(last['epoch']):.3g} of {epochs}, step {last['step']}, "
            f"best validation loss {best:.5g} ({run_dir})")


def report(config: Config, *, run_dir: Path, by_group: bool = False, reasons: int = 3) -> str:
    """The whole picture as text: the status table, the top reasons, the training run."""
    states = collect(config)
    table = status_table(states, by_group=by_group)
    shown = table.astype(object).where(table.notna(), "?")  # pandas' <NA> reads as an error
    lines = [f"where the run stands ({config.source}):", "",
             shown.to_string() if not shown.empty else "no stage has any item yet", ""]
    top = top_reasons(states, n=reasons)
    if not top.empty:
        lines += [f"top {reasons} reasons per stage (skipped and failed):", "",
                  top.to_string(index=False), ""]
    lines.append(training_line(run_dir, epochs=config.train.epochs))
    if states[0].upstream is None:
        lines.append(f"(waiting at stage 1 is '?': {config.paths.vggsound_csv} could not be "
                     "read here)")
    return "\n".join(lines)
