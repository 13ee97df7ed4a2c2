"""`kubetrain run` runs a job's own program (spec.container.command) under the job's store and agents,
with its script mounted from a ConfigMap in the same manifest: the host stands in for the image."""

from __future__ import annotations

import subprocess

from conftest import REPO, child_env, kubetrain_cli

from kubetrain.api.manifests import load_trainingjobs
from kubetrain.local_run import local_mounts, local_program
from support.variants import load_all


def test_the_plain_script_example_trains_here_as_in_its_pods(tmp_path):
    proc = subprocess.run(kubetrain_cli("run", str(REPO / "examples" / "plain-torchrun-script.yaml"), "--workdir", str(tmp_path)),
                          env=child_env(), capture_output=True, text=True, timeout=240)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text + (tmp_path / "agent-0.log").read_text()[-3000:]
    assert "kubetrain: job 'my-script' completed (exit 0)" in text, text
    assert "/app is" in text and "not applied on this host: spec.pod.volumes" not in text, text
    # The script's own output: both local agents joined one world, and its loss fell.
    log = (tmp_path / "agent-0.log").read_text() + (tmp_path / "agent-1.log").read_text()
    assert "world size 2" in log, log[-3000:]
    losses = [float(line.rsplit(" ", 1)[1]) for line in log.splitlines() if line.startswith("step ") and " loss " in line]
    assert len(losses) >= 2 and losses[-1] < losses[0], log[-3000:]


def test_paths_under_a_configmap_mount_point_at_its_local_copy(tmp_path):
    path = REPO / "examples" / "plain-torchrun-script.yaml"
    (job,) = load_trainingjobs(path)
    mounts = local_mounts(job, load_all(path), tmp_path)
    assert mounts == {"/app": tmp_path / "volumes" / "script"}
    assert (tmp_path / "volumes" / "script" / "train.py").read_text().startswith('"""A plain DDP script')
    program = local_program(job, mounts)
    assert program[1:] == (str(tmp_path / "volumes" / "script" / "train.py"), "--steps", "200")
    # Without its ConfigMap in the file there is nothing to stand in: the path stays as written.
    assert local_program(job, local_mounts(job, [], tmp_path))[1] == "/app/train.py"
