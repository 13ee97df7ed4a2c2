{{/* Names: RELEASE-kubetrain, or RELEASE when it already contains the chart name. */}}
{{- define "kubetrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubetrain.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubetrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetrain.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubetrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubetrain
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kubetrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetrain.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion. */}}
{{- define "kubetrain.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* More than one replica: Kopf peering decides which pod acts. One (or zero): standalone. */}}
{{- define "kubetrain.peering" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{/*
RBAC rules in a served namespace (a Role per namespace, or the ClusterRole in cluster mode).
Each rule names the code that needs it.
*/}}
{{- define "kubetrain.namespacedRules" -}}
# Jobs: Kopf lists/watches them and patches finalizers and its annotations (patch); the
# Kueue gate patches spec.suspend; job_exists reads one (get); ttlSecondsAfterFinished deletes one.
- apiGroups: [kubetrain.dev]
  resources: [trainingjobs]
  verbs: [get, list, watch, patch, delete, create]
# Job status: the planner's phase, conditions and replica counts (Kopf patches the subresource).
- apiGroups: [kubetrain.dev]
  resources: [trainingjobs/status]
  verbs: [patch]
# Sweeps: Kopf watches them and patches its annotations; a finished sweep's TTL deletes it. Their
# trials are TrainingJobs (create above; patch records the objective on them and suspends the pruned).
- apiGroups: [kubetrain.dev]
  resources: [trainingsweeps]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [kubetrain.dev]
  resources: [trainingsweeps/status]
  verbs: [patch]
# Pods: watch-fed indexes (list, watch), worker and store pods (create), scale-down,
# suspend and cleanup (delete), releasing the tracking finalizer (get, then a JSON patch).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete, patch]
# The rendezvous store's Service: created once per job, looked up once per operator start.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create]
# What the pods refer to (checkpoint and data claims, ConfigMaps, the job's ServiceAccount): one that
# does not exist is reported (CheckpointVolumeMissing, ReferencedObjectMissing), not waited on forever.
# Never secrets: the operator does not read them.
- apiGroups: [""]
  resources: [persistentvolumeclaims, configmaps, serviceaccounts]
  verbs: [get]
# Kopf's and the planner's Events (Starting, Scaling, NodeLost, ...): Kopf only posts them.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.kueue.enabled }}
# Kueue (docs/kueue.md): one Workload per queued job (create, read each reconcile, active follows
# spec.suspend: patch; finished and deleted with its job: list, delete; Kopf watches them to wake
# the job when Kueue admits or evicts it: list, watch), and its status: the quota given back after
# an eviction, Finished, reclaimable pods (update: a whole-status write).
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads/status]
  verbs: [update]
{{- end }}
{{- end -}}

{{/* Cluster-scoped reads every mode needs. */}}
{{- define "kubetrain.clusterRules" -}}
# Capacity planning: free GPUs per node, readiness and taints (read-only, watch-fed index).
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
# Kopf notices a CRD installed or upgraded after the operator started (read-only).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.kueue.enabled }}
# Kueue: an admitted flavor's node labels and tolerations go onto the pods; a job's PriorityClass
# value goes into its Workload (Kueue requires it with the reference). Read-only.
- apiGroups: [kueue.x-k8s.io]
  resources: [resourceflavors]
  verbs: [get]
- apiGroups: [scheduling.k8s.io]
  resources: [priorityclasses]
  verbs: [get]
{{- end }}
{{- end -}}

{{/* Kopf's peering object: its status holds each pod's keep-alive and priority. */}}
{{- define "kubetrain.peeringRule" -}}
- apiGroups: [kopf.dev]
  resources: [{{ . }}]
  verbs: [list, watch, patch]
{{- end -}}
