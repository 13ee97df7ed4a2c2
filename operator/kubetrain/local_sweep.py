"""``kubetrain sweep``: a TrainingSweep manifest run on this machine, each trial a local job.

The same study (:mod:`kubetrain.tuning`) as the operator's: Optuna chooses the values,
each trial's TrainingJob is the template with those values (validated by the job's
models), its objective is read by step from the trainer's progress and reported to
the pruner, and a pruned trial is stopped as a pod deletion stops it (SIGTERM, a
checkpoint, then gone). A progress table shows each trial as it changes state and
the best configuration is printed at the end.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from kubetrain.api.models import TrainingJob
from kubetrain.api.sweep import TrainingSweep
from kubetrain.operator import naming
from kubetrain.trainer_env import contract_for
from kubetrain.tuning import pbt
from kubetrain.tuning.space import InvalidTrial, as_strings
from kubetrain.tuning.status import trial_status
from kubetrain.tuning.study import SweepStudy
from kubetrain.tuning.reports import ObjectiveReports, report_interval
from kubetrain.tuning.trials import TrialRecord, thin, trial_job

# Local trials run one replica each: a sweep's parallelism, not its trials' elasticity, uses the cores.
LOCAL_TRIAL_REPLICAS = 1
POLL_SECONDS = 0.5


@dataclass
class _Running:
    record: TrialRecord
    job: object  # kubetrain_trainer.local.LocalJob
    reports: ObjectiveReports
    started: float
    max_steps: int  # the trial's own (a PBT trial stops at the end of its generation)


def _line(rec: TrialRecord, objective_step: int | None) -> str:
    seen = rec.value_at(objective_step) if rec.state == "Succeeded" else rec.last
    value = f"{seen[1]:.4f} @ step {seen[0]}" if seen else "-"
    params = ", ".join(f"{k}={v}" for k, v in as_strings(rec.params).items())
    why = f"  ({rec.reason})" if rec.reason else ""
    return f"  trial {rec.number:>3}  {rec.state:<9}  {value:<22}  {params}{why}"


@dataclass
class SweepResult:
    returncode: int  # 0 when at least one trial trained to the end; 128 + signal when stopped
    trials: list[TrialRecord]
    best: TrialRecord | None
    saved_steps: int  # trial-steps early stopping did not train


def run_sweep(sweep: TrainingSweep, *, workdir: str | Path | None = None, out: TextIO | None = None,
              max_trials: int | None = None, parallelism: int | None = None) -> SweepResult:
    """Run ``sweep`` locally, trial by trial, ``parallelism`` at a time.

    Trials keep their checkpoints under one root (``<workdir>/checkpoints/<namespace>/<trial>``, as on one
    volume in a cluster), so a population-based-training trial starts from another's as it would there."""
    from kubetrain_trainer.local import RUN_STOP_SIGNALS, LocalJob
    from kubetrain_trainer.stop_flag import StopFlag

    out = out or sys.stdout
    spec = sweep.spec
    work = Path(workdir or tempfile.mkdtemp(prefix=f"kubetrain-sweep-{sweep.metadata.name}-"))
    if max_trials:
        spec = spec.model_copy(update={"max_trials": max_trials})
        sweep = sweep.model_copy(update={"spec": spec})
    is_pbt = spec.algorithm.type == "pbt"
    budget = pbt.total_trials(spec) if is_pbt else spec.max_trials
    width = parallelism or spec.parallelism
    body = {"metadata": {"name": sweep.metadata.name, "namespace": "default", "uid": sweep.metadata.name}}
    seed_key = str(spec.algorithm.seed) if spec.algorithm.seed is not None else sweep.metadata.name
    study = SweepStudy.rebuild(spec, [], name=sweep.metadata.name)
    records: dict[int, TrialRecord] = {}
    running: dict[int, _Running] = {}
    saved_steps = 0
    started = time.monotonic()
    print(f"kubetrain sweep: {sweep.metadata.name}: {budget} trials, {width} at a time, {spec.algorithm.type} "
          f"+ {spec.early_stopping.type} on {spec.objective.metric} ({spec.objective.goal}); workdir {work}", file=out, flush=True)

    def settle(rec: TrialRecord, state: str, reason: str | None = None) -> None:
        rec.state, rec.reason = state, reason
        print(_line(rec, spec.objective.step), file=out, flush=True)

    # The trainer's progress file spells the objective in snake case.
    metric = {"loss": "loss", "tokensPerSecond": "tokens_per_second", "mfu": "mfu"}[spec.objective.metric]
    stop = StopFlag(RUN_STOP_SIGNALS)
    with stop.installed():
        next_number = 0
        failed = 0
        # Until the budget is spent or too many trials failed, and what runs has ended.
        while ((next_number < budget and failed <= spec.max_failed_trials) or running) and not stop.requested:
            # Fill the free slots.
            while len(running) < width and next_number < budget and failed <= spec.max_failed_trials:
                origin = ""
                if is_pbt:
                    try:
                        nxt = pbt.next_trial(spec, next_number, records, seed_key, study.ask)
                    except LookupError as exc:
                        failed = spec.max_failed_trials + 1
                        print(f"kubetrain sweep: {exc}", file=out, flush=True)
                        break
                    if nxt is None:
                        break  # the previous generation is still training
                    values, extra = nxt.params, {"max_steps": nxt.max_steps, "parent": nxt.parent, "exploited": nxt.exploited}
                    if nxt.parent is not None:
                        origin = f" from trial {nxt.parent.number}" + (" (exploited, perturbed)" if nxt.exploited else "")
                else:
                    values, extra = study.ask(next_number), {}
                number, next_number = next_number, next_number + 1
                rec = records[number] = TrialRecord(number, naming.trial_name(sweep.metadata.name, number), "Pending", values)
                try:
                    manifest = trial_job(sweep, body, number, values, **extra)
                except InvalidTrial as exc:
                    if number in study.trial_of:
                        study.fail(number)
                    failed += 1
                    settle(rec, "Failed", str(exc))
                    continue
                job = TrainingJob(metadata={"name": rec.job}, spec=manifest["spec"])
                contract = contract_for(job, str(work / "checkpoints"))
                local = LocalJob(contract, replicas=LOCAL_TRIAL_REPLICAS, max_restarts=0, workdir=work / rec.job)
                local.start()
                running[number] = _Running(rec, local, ObjectiveReports(report_interval(sweep)), time.monotonic(),
                                           job.spec.trainer.max_steps)
                settle(rec, "Running", origin.strip() or None)
            time.sleep(POLL_SECONDS)
            for number, run in list(running.items()):
                rec, st = run.record, run.job.status() or {}
                new = {}
                if st.get("step") is not None and st.get(metric) is not None:
                    new = run.reports.observe(int(st["step"]), float(st[metric]))
                    rec.values = thin({**rec.values, **new})
                if new and number in study.trial_of and study.should_prune(number, new):
                    step = max(rec.values)
                    run.job.stop()
                    saved_steps += spec.template.spec.trainer.max_steps - step
                    study.pruned(number)
                    settle(rec, "Pruned", f"behind at step {step}")
                    del running[number]
                    continue
                if run.job.running():
                    continue
                run.job.stop()
                codes = set(run.job.poll().values())
                if codes == {0} and st.get("step") == run.max_steps and st.get(metric) is not None:
                    # The last step's value is the trial's own result, not a mean over the last reports.
                    rec.values = thin({**rec.values, int(st["step"]): float(st[metric])})
                    final = rec.value_at(spec.objective.step)
                    if number in study.trial_of:
                        study.completed(number, final[1])
                    settle(rec, "Succeeded")
                else:
                    failed += 1
                    if number in study.trial_of:
                        study.fail(number)
                    messages = "; ".join(m for m in run.job.termination_messages().values() if m)[:300]
                    settle(rec, "Failed", f"exit codes {sorted(c for c in codes if c is not None)}: {messages}")
                del running[number]
        for run in running.values():
            run.job.stop()
            settle(run.record, "Failed", "stopped with the sweep")

    best_record = pbt.best(spec, list(records.values())) if is_pbt else study.best(list(records.values()))
    summary = trial_status(list(records.values()), best_record, spec.objective.step)
    counts = summary["trials"]
    print(f"kubetrain sweep: done in {time.monotonic() - started:.0f}s: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
          + f"; early stopping saved {saved_steps} trial-steps", file=out, flush=True)
    best = summary.get("bestTrial")
    if best:
        print(f"best: trial {best['number']} {spec.objective.metric} {best.get('value', float('nan')):.4f}: "
              + ", ".join(f"{k}={v}" for k, v in best["parameters"].items()), file=out, flush=True)
    code = (stop.exit_code or 1) if stop.requested else (0 if counts["succeeded"] else 1)
    return SweepResult(code, sorted(records.values(), key=lambda r: r.number), best_record, saved_steps)
