"""The ``kubetrain`` command: generate the CRD, validate manifests, run a job locally."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kubetrain.api.advice import spec_warnings
from kubetrain.api.manifests import ManifestError, load_any, load_sweeps, load_trainingjobs
from kubetrain.api.models import TrainingJob
from kubetrain.local_run import configmaps_in


def _cmd_generate(args: argparse.Namespace) -> int:
    from kubetrain.api.crd import render_crd
    from kubetrain.generate import write_all

    if args.stdout:
        sys.stdout.write(render_crd())
        return 0
    for path in write_all(Path(args.repo_root)):
        print(f"wrote {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            for obj in load_any(path):
                print(f"{path}: {obj.kind} {obj.metadata.name} is valid")
                for warning in spec_warnings(obj) if isinstance(obj, TrainingJob) else ():  # valid, but likely to hurt
                    print(f"{path}: {obj.kind} {obj.metadata.name}: warning: {warning}", file=sys.stderr)
        except ManifestError as exc:
            print(exc, file=sys.stderr)
            failed = True
    return 1 if failed else 0


def pod_only_settings(job: TrainingJob, provided: dict[str, Any] | None = None) -> list[str]:
    """What of ``job`` only a pod can carry out: `kubetrain run` says so instead of ignoring it.

    Local processes run as you, with your files and your network: there are no volumes to mount,
    no images to pull, no ServiceAccount, securityContext or pod metadata. A configMap volume whose
    ConfigMap is in ``provided`` (the manifest file) is the exception: ``kubetrain run`` writes it out.
    """
    pod, c = job.spec.pod, job.spec.container
    local = {v.name for v in pod.volumes or () if v.config_map and v.config_map.name in (provided or {})}
    volumes = [v for v in pod.volumes or () if v.name not in local]
    mounts = [m for m in c.volume_mounts or () if m.name not in local]
    out = []
    if volumes:
        out.append("spec.pod.volumes (" + ", ".join(f"{v.name}: {v.source()}" for v in volumes)
                   + "): nothing is mounted; paths the job reads must exist on this host")
    if mounts:
        out.append("spec.container.volumeMounts (" + ", ".join(m.mount_path for m in mounts) + ")")
    if pod.init_containers:
        out.append("spec.pod.initContainers (" + ", ".join(x.name for x in pod.init_containers)
                   + "): init containers and sidecars do not run")
    if pod.image_pull_secrets or c.image:
        out.append("spec.container.image and spec.pod.imagePullSecrets: this host's Python environment runs the job")
    named = [("spec.pod.serviceAccountName", pod.service_account_name),
             ("spec.pod.securityContext", pod.security_context), ("spec.container.securityContext", c.security_context),
             ("spec.pod.metadata", pod.metadata), ("spec.pod.shmSize", pod.shm_size)]
    out += [f"{path}: the processes run as you, on this host" for path, value in named if value is not None]
    return out


def _first(load, path: str):
    """The first object ``load`` reads from ``path``, or None after saying why it is invalid."""
    try:
        return load(path)[0]
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    if (job := _first(load_trainingjobs, args.manifest)) is None:
        return 2
    objects = [d for d in yaml.safe_load_all(Path(args.manifest).read_text()) if isinstance(d, dict)]
    for line in pod_only_settings(job, provided=configmaps_in(objects)):
        print(f"kubetrain run: not applied on this host: {line}", file=sys.stderr)
    for warning in spec_warnings(job):
        print(f"kubetrain run: warning: {warning}", file=sys.stderr)
    # Imported late: the local runner needs the trainer extra (torch).
    from kubetrain.local_run import run_locally

    return run_locally(job, replicas=args.replicas, max_steps=args.max_steps, workdir=args.workdir, objects=objects)


def _cmd_sweep(args: argparse.Namespace) -> int:
    if (sweep := _first(load_sweeps, args.manifest)) is None:
        return 2
    for line in pod_only_settings(TrainingJob(metadata={"name": "trial"}, spec=sweep.spec.template.spec)):
        print(f"kubetrain sweep: not applied on this host: {line.replace('spec.', 'spec.template.spec.', 1)}", file=sys.stderr)
    # Imported late: the local runner needs the trainer extra (torch).
    from kubetrain.local_sweep import run_sweep

    return run_sweep(sweep, workdir=args.workdir, max_trials=args.max_trials, parallelism=args.parallelism).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    for name in ("generate", "crds"):
        gen = sub.add_parser(name, help="write every generated file: the CRD (crds/, chart), the API reference, "
                             "the Grafana dashboard and the Prometheus rules")
        gen.add_argument("--repo-root", default=".", help="repository root (default: .)")
        gen.add_argument("--stdout", action="store_true", help="print the CRD instead of writing files")
        gen.set_defaults(func=_cmd_generate)

    validate = sub.add_parser("validate", help="validate TrainingJob and TrainingSweep manifests with the API models")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=_cmd_validate)

    run = sub.add_parser("run", help="run a TrainingJob manifest on this machine with torchrun")
    run.add_argument("manifest")
    run.add_argument("--replicas", type=int, default=None, help="local replicas (default: the spec's max, at most 2)")
    run.add_argument("--max-steps", type=int, default=None, help="override spec.trainer.maxSteps")
    run.add_argument("--workdir", default=None, help="checkpoints and logs (default: a new temp dir)")
    run.set_defaults(func=_cmd_run)

    sw = sub.add_parser("sweep", help="run a TrainingSweep manifest on this machine: each trial a local job")
    sw.add_argument("manifest")
    sw.add_argument("--max-trials", type=int, default=None, help="override spec.maxTrials")
    sw.add_argument("--parallelism", type=int, default=None, help="override spec.parallelism")
    sw.add_argument("--workdir", default=None, help="trials' checkpoints and logs (default: a new temp dir)")
    sw.set_defaults(func=_cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
