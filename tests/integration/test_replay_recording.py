"""Recording the saved histories of tests/workflows/test_replay.py, and replaying what the
current code writes (tests/support/record_histories.py does the recording).

``test_current_histories_replay_and_record`` runs in every run: the two fast paths (pass,
invite-failed) recorded from the current code on the session stack must be the paths of the
durable set they claim and replay. ``test_record_the_other_paths`` runs only when
``PYLEVER_RECORD_HISTORIES`` asks for other paths; they need a time-skipping stack of their
own. Which paths, and why record (tests/workflows/test_replay.py says more)::

    PYLEVER_RECORD_HISTORIES=durable:all .venv/bin/pytest tests/integration/test_replay_recording.py
    PYLEVER_RECORD_HISTORIES=durable:expired,adopted .venv/bin/pytest tests/integration/test_replay_recording.py
    PYLEVER_RECORD_HISTORIES=durable:more .venv/bin/pytest tests/integration/test_replay_recording.py

then ``.venv/bin/pytest tests/workflows/test_replay.py`` replays the saved files.
"""

from __future__ import annotations

import os

import pytest

from tests.support import record_histories
from tests.support.integration_stack import Stack
from tests.workflows.test_replay import (
    ALIASES_OF,
    DURABLE_SET,
    GROUPS_OF,
    SETS,
    _check_and_replay,
    _group_of,
    save,
)


def _to_record() -> tuple[str, set[str]]:
    """The set and the recording groups ``PYLEVER_RECORD_HISTORIES`` asks for:
    ``[SET:]GROUPS``, SET ``durable`` (the default) or ``shipped``, GROUPS ``1`` (or
    ``all``) for every one, else a comma-separated list of group names (or aliases:
    ``more``); unset: none."""
    value = os.environ.get("PYLEVER_RECORD_HISTORIES", "").strip()
    if not value or value == "0":
        return "durable", set()
    which, sep, groups = value.partition(":")
    if not sep:
        which, groups = "durable", value
    which, groups = which.strip(), groups.strip()
    if which not in SETS:
        raise pytest.UsageError(
            f"PYLEVER_RECORD_HISTORIES: unknown set {which!r}; sets: {sorted(SETS)}"
        )
    known = GROUPS_OF[which]
    if groups in ("1", "all"):
        return which, set(known)
    aliases = ALIASES_OF[which]
    named = {g.strip() for g in groups.split(",") if g.strip()}
    asked = {each for g in named for each in aliases.get(g, {g})}
    unknown = asked - set(known)
    if unknown or not asked:
        raise pytest.UsageError(
            f"PYLEVER_RECORD_HISTORIES: unknown {sorted(unknown)} in the {which} set; "
            f"groups: {sorted(known)}; aliases: {sorted(aliases)}"
        )
    return which, asked


RECORD_SET, RECORD = _to_record()
RECORD_PREFIX = SETS[RECORD_SET]


_SLOW_AND_DURABLE_ONLY = {
    **record_histories.SLOW,
    **record_histories.DURABLE_ONLY,
    **record_histories.MORE,
}


async def test_current_histories_replay_and_record(stack: Stack) -> None:
    """What the workflows write now on the fast paths (pass, invite-failed) is the path of
    the durable set it claims and replays with the stack's converter (and is saved when
    asked)."""
    prefix = RECORD_PREFIX if RECORD else DURABLE_SET
    recorded = await record_histories.record(
        stack, record_histories.FAST, set(record_histories.FAST), prefix
    )
    assert set(recorded) == {f"{prefix}{n}" for n in (
        "assessment-pass", "invitation-pass", "assessment-invite-failed",
        "invitation-invite-failed")}  # fmt: skip
    await _check_and_replay(recorded)
    asked = {g for g in RECORD if g in record_histories.FAST}
    if asked:
        save({n: h for n, h in recorded.items() if _group_of(n) in asked})


@pytest.mark.skipif(
    not RECORD & set(_SLOW_AND_DURABLE_ONLY),
    reason="records only with PYLEVER_RECORD_HISTORIES ([durable:]1, or some of: "
    + ", ".join([*_SLOW_AND_DURABLE_ONLY, *ALIASES_OF["durable"]])
    + ")",
)
async def test_record_the_other_paths() -> None:
    """Records the paths that need a stack of their own (time skipping, a deletion that
    keeps the histories), checks each is the path it claims, replays and saves them."""
    async with record_histories.recording_stack() as stack:
        recorded = await record_histories.record(
            stack, _SLOW_AND_DURABLE_ONLY, RECORD, RECORD_PREFIX
        )
    await _check_and_replay(recorded)
    assert {_group_of(n) for n in recorded} == RECORD & set(_SLOW_AND_DURABLE_ONLY)
    save(recorded)
