"""What ``cli.py backfill`` prints: the progress line (a bar on a terminal), the table, the
summary, and ``--since``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from pylever.contracts.sweep import SweepMode, SweepResult, SweptCandidate
from pylever.ops.commands.backfill import (
    backfill_summary,
    backfill_table,
    parse_since,
    progress_text,
)


def test_progress_bar_fills_with_the_stages_done() -> None:
    counts = {"listed": 120, "started": 80, "assessed": 30, "no_test": 10}
    assert progress_text({"stages": 0, **counts}) == (
        "listed 120, started 80, already assessed 30, no test 10"
    )
    half = progress_text({"stages": 2, "stages_done": 1, **counts}, width=10)
    assert half.startswith("[#####.....] stages 1/2: listed 120")
    done = progress_text({"stages": 2, "stages_done": 2, **counts}, width=10)
    assert done.startswith("[##########] stages 2/2")


def _result(mode: SweepMode) -> SweepResult:
    return SweepResult(
        account_id="acme",
        mode=mode,
        since=datetime(2026, 11, 1, tzinfo=UTC),
        stages=("stage-1",),
        listed=3,
        assessed=1,
        started=1,
        no_test=1,
        candidates=(
            SweptCandidate(opportunity_id="o1", name="Ada", stage="Py Assessment",
                           entered_at_ms=1_793_000_000_000, tests=("SQL", "Algorithms"),
                           outcome="would_start"),
            SweptCandidate(opportunity_id="o2", name="Bob", stage="Py Assessment",
                           entered_at_ms=None, tests=("SQL",), outcome="assessed"),
            SweptCandidate(opportunity_id="o3", name="", stage="Screen", outcome="no_test"),
        ),
    )  # fmt: skip


def test_the_table_names_each_candidate_with_entry_date_test_and_outcome() -> None:
    lines = backfill_table(_result(SweepMode.DRY_RUN)).splitlines()
    assert lines[0].split() == ["name", "stage", "entered", "test", "outcome"]
    assert lines[2].split("  ")[0] == "Ada" and "2026-10-26 " in lines[2]
    assert "SQL, Algorithms" in lines[2] and lines[2].endswith("would be invited")
    assert lines[3].endswith("already assessed") and " - " in lines[3]
    assert lines[4].startswith("-") and lines[4].endswith("no test configured")


@pytest.mark.parametrize(
    ("mode", "verb"), [(SweepMode.DRY_RUN, "would be invited"), (SweepMode.BACKFILL, "invited")]
)
def test_the_summary_counts(mode: SweepMode, verb: str) -> None:
    assert backfill_summary(_result(mode)) == (
        f"3 candidates in 1 trigger stage(s) since 2026-11-01 00:00 UTC: 1 {verb}, "
        "1 already assessed, 1 without a test configured (not invited)"
    )


def test_since_is_a_utc_day() -> None:
    assert parse_since("2026-11-02") == datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="YYYY-MM-DD"):
        parse_since("02/11/2026")
