"""One reconcile of a TrainingSweep, decided from its trial jobs: pure apart from the study it keeps.

Level-triggered like the TrainingJob's planner: every round reads the sweep's trial
jobs (from the operator's watch index), brings the study up to date with what they
did, and says what to do: trials to create within ``parallelism``, values to record
on a trial, trials to prune (suspended, checkpoint kept), trials to suspend or
resume with the sweep, the status. The study lives in the operator's memory and is
rebuilt from the trial jobs whenever it is missing (an operator start, a conflict).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kubetrain.api.sweep import TrainingSweep
from kubetrain.tuning import pbt
from kubetrain.tuning.reports import ObjectiveReports, report_interval
from kubetrain.tuning.space import InvalidTrial
from kubetrain.tuning.status import trial_status
from kubetrain.tuning.trials import TrialRecord, record_from_job, saved_gpu_seconds, thin, trial_job

if TYPE_CHECKING:  # kubetrain.tuning.study imports Optuna: loaded with the first sweep, not with the operator
    from kubetrain.tuning.study import SweepStudy

FINISHED = ("Succeeded", "Pruned", "Failed")
# The status field of a trial job's throughput that each objective reads.
OBJECTIVE_FIELD = {"loss": "loss", "tokensPerSecond": "tokensPerSecond", "mfu": "mfu"}


@dataclass
class SweepMemory:
    """What the operator keeps per sweep between rounds; all of it can be rebuilt from the trial jobs."""

    study: SweepStudy | None = None
    reports: dict[int, ObjectiveReports] = field(default_factory=dict)
    told: set[int] = field(default_factory=set)  # trials whose end the study knows
    invalid: int = 0  # draws whose values made no valid TrainingJob (no job, so not in any object)


@dataclass
class SweepPlan:
    create: list[dict[str, Any]] = field(default_factory=list)  # trial TrainingJobs
    record_values: dict[str, dict[int, float]] = field(default_factory=dict)  # trial job -> its values so far
    prune: dict[str, str] = field(default_factory=dict)  # trial job -> why (suspend it, record the outcome)
    saved_gpu_seconds: dict[str, float] = field(default_factory=dict)  # pruned trial job -> GPU time not spent
    suspend: list[str] = field(default_factory=list)
    resume: list[str] = field(default_factory=list)
    delete_sweep: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _live(job: dict[str, Any], metric: str) -> tuple[int, float] | None:
    tp = (job.get("status") or {}).get("throughput") or {}
    step, value = tp.get("step"), tp.get(OBJECTIVE_FIELD[metric])
    return (int(step), float(value)) if step is not None and value is not None else None


def _seed_key(sweep: TrainingSweep, body: dict[str, Any]) -> str:
    """What PBT's draws are seeded by: the sweep's seed, else its uid (stable for the sweep's life)."""
    seed = sweep.spec.algorithm.seed
    return str(seed) if seed is not None else body["metadata"].get("uid", sweep.metadata.name)


def _condition(ctype: str, reason: str, message: str, now: datetime, generation: int) -> dict[str, Any]:
    return {"type": ctype, "status": "True", "reason": reason, "message": message[:32768],
            "lastTransitionTime": _iso(now), "observedGeneration": generation}


def plan_sweep(sweep: TrainingSweep, body: dict[str, Any], jobs: list[dict[str, Any]], memory: SweepMemory,
               now: datetime | None = None) -> SweepPlan:
    now = now or datetime.now(timezone.utc)
    spec, plan = sweep.spec, SweepPlan()
    old = body.get("status") or {}
    generation = body["metadata"].get("generation", 0)
    by_job = {j["metadata"]["name"]: j for j in jobs}
    records = [r for r in (record_from_job(j) for j in jobs) if r is not None]
    metric = spec.objective.metric
    for rec in records:
        # The last value a finished trial showed is its result: on record, before any study sees it.
        live = _live(by_job[rec.job], metric)
        if rec.state in ("Succeeded", "Failed") and live is not None and live[0] not in rec.values:
            rec.values = thin({**rec.values, live[0]: live[1]})
            plan.record_values[rec.job] = rec.values
    if memory.study is None:
        from kubetrain.tuning.study import SweepStudy

        memory.study = SweepStudy.rebuild(spec, records, name=body["metadata"].get("uid", sweep.metadata.name))
        memory.told = {r.number for r in records if r.state in FINISHED}
    study = memory.study

    # What the trials did since the last round: their objective by step, and how they ended.
    for rec in records:
        live = _live(by_job[rec.job], metric)
        if rec.number not in memory.told and live is not None and rec.state in ("Pending", "Running"):
            reports = memory.reports.setdefault(rec.number, ObjectiveReports(report_interval(sweep)))
            new = reports.observe(*live)
            if new:
                rec.values = thin({**rec.values, **new})
                plan.record_values[rec.job] = rec.values
                if rec.number in study.trial_of and study.should_prune(rec.number, new):
                    step = max(rec.values)
                    rec.state, rec.reason, rec.changed = "Pruned", f"Pruned: behind the other trials at step {step}", now
                    plan.prune[rec.job] = rec.reason
                    rec.saved_gpu_seconds = saved_gpu_seconds(by_job[rec.job], step, spec.template.spec.trainer.max_steps, now)
                    plan.saved_gpu_seconds[rec.job] = rec.saved_gpu_seconds
                    study.pruned(rec.number)
                    memory.told.add(rec.number)
                    plan.events.append(("Normal", "TrialPruned", f"trial {rec.number} ({rec.job}): {rec.reason}"))
        if rec.number not in memory.told and rec.state in ("Succeeded", "Failed") and rec.number in study.trial_of:
            # Its values through the pruner first, as if seen live: the rungs that later trials are
            # judged against must hold it (its own decision no longer matters).
            study.should_prune(rec.number, rec.values)
            final = rec.value_at(spec.objective.step)
            if rec.state == "Succeeded" and final is not None:
                study.completed(rec.number, final[1])
            else:
                study.fail(rec.number)
                plan.events.append(("Warning", "TrialFailed", f"trial {rec.number} ({rec.job}): {rec.reason or 'no objective reported'}"))
            memory.told.add(rec.number)

    active = [r for r in records if r.state in ("Pending", "Running")]
    failed = sum(r.state == "Failed" for r in records) + memory.invalid
    numbers = [r.number for r in records]
    next_number = max(numbers) + 1 if numbers else 0
    start = _parse(old.get("startTime")) or now
    st: dict[str, Any] = {"observedGeneration": generation, "startTime": _iso(start)}
    phase, reason, message = "Running", "TrialsRunning", f"{len(active)} trial(s) running"

    finished_at = _parse(old.get("completionTime"))
    if old.get("phase") in ("Succeeded", "Failed"):
        phase, reason, message = old["phase"], "Finished", "the sweep has ended"
        if spec.ttl_seconds_after_finished is not None and finished_at is not None \
                and (now - finished_at).total_seconds() >= spec.ttl_seconds_after_finished:
            plan.delete_sweep = True
    elif failed > spec.max_failed_trials:
        phase, reason, message = "Failed", "TooManyFailedTrials", f"{failed} trials failed (maxFailedTrials {spec.max_failed_trials})"
    elif spec.active_deadline_seconds is not None and (now - start).total_seconds() > spec.active_deadline_seconds:
        phase, reason, message = "Failed", "DeadlineExceeded", f"the sweep ran past activeDeadlineSeconds {spec.active_deadline_seconds}"
    elif spec.suspend:
        phase, reason, message = "Suspended", "Suspended", "spec.suspend: trials suspended, none started"
        plan.suspend = [r.job for r in active if not (by_job[r.job].get("spec") or {}).get("suspend")]
    else:
        # A sweep resumed: its trials resume too (pruned ones stay stopped).
        plan.resume = [r.job for r in active if (by_job[r.job].get("spec") or {}).get("suspend")]
        exhausted = study.exhausted()
        budget = pbt.total_trials(spec) if spec.algorithm.type == "pbt" else spec.max_trials
        by_number = {r.number: r for r in records}
        while len(active) + len(plan.create) < spec.parallelism and next_number < budget and not exhausted \
                and failed <= spec.max_failed_trials:
            try:
                if spec.algorithm.type == "pbt":
                    try:
                        nxt = pbt.next_trial(spec, next_number, by_number, _seed_key(sweep, body), study.ask)
                    except LookupError as exc:
                        phase, reason, message = "Failed", "PopulationFailed", str(exc)
                        break
                    if nxt is None:
                        break  # the previous generation is still training: the ranking waits for all of it
                    values = nxt.params
                    job = trial_job(sweep, body, next_number, values, max_steps=nxt.max_steps, parent=nxt.parent,
                                    exploited=nxt.exploited)
                else:
                    values = study.ask(next_number)
                    job = trial_job(sweep, body, next_number, values)
                plan.create.append(job)
            except InvalidTrial as exc:
                if next_number in study.trial_of:  # a drawn trial; PBT's later generations are decided, not drawn
                    study.fail(next_number)
                memory.invalid += 1
                failed += 1
                plan.events.append(("Warning", "TrialInvalid", str(exc)[:1024]))
                continue  # its number is not used by any object: the next draw takes it
            next_number += 1
            exhausted = study.exhausted()
        if phase == "Running" and not active and not plan.create and (next_number >= budget or exhausted):
            done = [r for r in records if r.state == "Succeeded"]
            if done:
                phase, reason, message = "Succeeded", "TrialsFinished", f"{len(records)} trials ended, {len(done)} trained to the end"
            else:
                phase, reason, message = "Failed", "NoTrialSucceeded", "every trial was pruned or failed"
    if phase == "Failed" and old.get("phase") != "Failed":
        plan.suspend = [r.job for r in active]  # stop what still trains; checkpoints are kept
    if phase in ("Succeeded", "Failed"):
        st["completionTime"] = old.get("completionTime") or _iso(now)
        if old.get("phase") != phase:
            plan.events.append(("Normal" if phase == "Succeeded" else "Warning", reason, message))
    st["phase"] = phase
    st["conditions"] = [_condition({"Running": "Running", "Suspended": "Suspended"}.get(phase, phase), reason, message,
                                   now, generation)]
    best = pbt.best(spec, records) if spec.algorithm.type == "pbt" else study.best(records)
    st.update(trial_status(records, best, spec.objective.step))
    st["trials"]["pending"] += len(plan.create)
    max_steps = spec.template.spec.trainer.max_steps
    st["prunedSteps"] = sum(max_steps - (r.last[0] if r.last else 0) for r in records if r.state == "Pruned")
    st["prunedGpuSeconds"] = round(sum(r.saved_gpu_seconds for r in records if r.state == "Pruned"), 1)
    plan.status = st
    return plan
