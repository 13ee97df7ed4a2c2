"""A sweep's status from its trial records: small at any trial count.

Counts by state, the best trial and the last few that changed: never a list of all
trials (Katib's Suggestion object outgrows etcd's 1.5 MiB at about 20,000 trials).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

from kubetrain.tuning.space import as_strings
from kubetrain.tuning.trials import TrialRecord

RECENT = 5
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def _summary(rec: TrialRecord, step: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"number": rec.number, "job": rec.job, "state": rec.state, "parameters": as_strings(rec.params)}
    seen = rec.value_at(step) if rec.state == "Succeeded" else rec.last
    if seen is not None:
        out["step"], out["value"] = seen
    if rec.reason:
        out["reason"] = rec.reason[:1024]
    return out


def trial_status(records: list[TrialRecord], best: TrialRecord | None, objective_step: int | None) -> dict[str, Any]:
    """The ``trials``, ``bestTrial`` and ``recentTrials`` fields of a sweep's status."""
    counts = Counter(r.state for r in records)
    recent = sorted(records, key=lambda r: (r.changed or _EPOCH, r.number), reverse=True)[:RECENT]
    out: dict[str, Any] = {
        "trials": {state.lower(): counts.get(state, 0) for state in ("Pending", "Running", "Succeeded", "Pruned", "Failed")},
        "recentTrials": [_summary(r, objective_step) for r in recent],
    }
    if best is not None:
        out["bestTrial"] = _summary(best, objective_step)
    return out
