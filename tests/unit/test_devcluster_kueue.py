"""Kueue beside the dev cluster (kubetrain_dev/devcluster/kueue.py): its config and webhooks, pure."""

from __future__ import annotations

import yaml

from kubetrain_dev.devcluster import build
from kubetrain_dev.devcluster.kueue import manager_config, webhook_configurations

MANIFESTS = """
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutating-webhook-configuration}
webhooks:
- name: mjob.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}}
  rules: [{apiGroups: [batch], apiVersions: [v1], operations: [CREATE], resources: [jobs]}]
- name: mworkload.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /mutate-kueue-x-k8s-io-v1beta2-workload}}
  rules: [{apiGroups: [kueue.x-k8s.io], apiVersions: [v1beta2], operations: [CREATE], resources: [workloads]}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: validating-webhook-configuration}
webhooks:
- name: vpod.kb.io
  clientConfig: {service: {name: webhook-service, namespace: system, path: /validate--v1-pod}}
  rules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
"""


def test_only_kueues_own_webhooks_are_registered_on_the_loopback_url():
    docs = webhook_configurations(MANIFESTS, "https://127.0.0.1:9443", "Q0E=")
    assert [d["metadata"]["name"] for d in docs] == ["kueue-mutating-webhook-configuration"]
    (hook,) = docs[0]["webhooks"]
    assert hook["name"] == "mworkload.kb.io"
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate-kueue-x-k8s-io-v1beta2-workload", "caBundle": "Q0E="}


def test_manager_config_manages_only_queued_jobs_and_knows_our_kind():
    cfg = manager_config(8081, 9443)
    assert cfg["manageJobsWithoutQueueName"] is False
    assert cfg["integrations"]["externalFrameworks"] == ["TrainingJob.v1alpha1.kubetrain.dev"]
    assert cfg["internalCertManagement"] == {"enable": False} and cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["webhook"]["port"] == 9443 and cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:8081"
    assert yaml.safe_load(yaml.safe_dump(cfg)) == cfg


def test_kueue_is_a_default_component_of_make_tools():
    comp = build.COMPONENTS["kueue"]
    assert comp.default and comp.binaries == ("kueue",) and comp.bin_dir.parent.name == f"kueue-{comp.version}"
