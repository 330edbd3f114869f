{{/* Chart name, overridable with nameOverride. */}}
{{- define "aegis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name. The release name alone when it already contains the chart
name, so `helm install aegis charts/aegis` gives `aegis`, not `aegis-aegis`.
*/}}
{{- define "aegis.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aegis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that never change over the release's life: the Deployment's selector. */}}
{{- define "aegis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aegis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "aegis.labels" -}}
helm.sh/chart: {{ include "aegis.chart" . }}
{{ include "aegis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aegis
{{- end }}

{{- define "aegis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aegis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "aegis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The agent image of Jobs: the operator's own image unless agentImage is set. */}}
{{- define "aegis.agentImage" -}}
{{- default (include "aegis.image" .) .Values.agentImage }}
{{- end }}

{{/* An alert expression: the failures a counter counted within a window, per owner. */}}
{{- define "aegis.failuresExpr" -}}
{{- printf "sum by (%s) (increase(%s[%s])) > 0" .by .metric .window }}
{{- end }}

{{/* Runbook link of one alert. */}}
{{- define "aegis.runbook" -}}
{{- printf "%s#%s" .root.Values.prometheusRule.runbookBaseUrl (lower .alert) }}
{{- end }}

{{/*
RBAC rules for the namespaced resources the operator reads and writes: exactly what the e2e
suite saw the operator use when run as this chart's ServiceAccount (the emulator records every
request; tests/e2e/test_rbac_least_privilege.py fails on a refusal or an unused rule), plus the
few grants that suite does not reach, listed there with the code path that needs them.
There is no `*` anywhere, no `update` (kopf and Aegis send merge patches, never PUT), and no
`get` where only watches read.
*/}}
{{- define "aegis.namespacedRules" -}}
# kopf watches the kinds and patches their finalizers and progress annotations; the
# reconcilers read the objects they follow (a Restore's RecoveryPoint, a plan's state, a
# drill's run).
- apiGroups: ["dr.aegis.dev"]
  resources: ["backuppolicies", "recoverypoints", "restores", "failoverplans", "drdrills"]
  verbs: ["get", "list", "watch", "patch"]
# Scheduled runs and the catalog import create RecoveryPoints; retention deletes them.
- apiGroups: ["dr.aegis.dev"]
  resources: ["recoverypoints"]
  verbs: ["create", "delete"]
# The operator owns every status write (merge patches of the status subresource).
- apiGroups: ["dr.aegis.dev"]
  resources:
    - backuppolicies/status
    - recoverypoints/status
    - restores/status
    - failoverplans/status
    - drdrills/status
    - failoverapprovals/status
  verbs: ["patch"]
# FailoverApprovals are watched and listed (a plan acts on each once; nothing GETs one) and
# never created by the operator:
# creating one is the approvers' permission (see the aegis-failover-approver ClusterRole).
- apiGroups: ["dr.aegis.dev"]
  resources: ["failoverapprovals"]
  verbs: ["list", "watch", "patch"]
# Events on the resources it reconciles (kopf and Aegis post core/v1 events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Encryption keys, S3/Route53 credentials and database logins, read by reference; watched
# so that policies' references are re-checked from memory (a deleted key Secret shows at once).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Job pods: the agent's one-line result is their termination message.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Backup, restore and failover Jobs: followed by kopf's watch, read, created; a scheduled
# run replaced under concurrencyPolicy Replace has its Job deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# FailoverPlan workload checks read Deployments and StatefulSets; scale steps set replicas
# through the scale subresource only, as `kubectl scale` does.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale"]
  verbs: ["patch"]
{{- end }}

{{/* Rules that are cluster-scoped by nature, needed in both watch modes. */}}
{{- define "aegis.clusterRules" -}}
# kopf scans the CRDs (list, then watch) to find the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.leaderElection.enabled }}
# Leader election (kopf peering, operator/aegis/k8s/peering.py): each replica creates the
# peering object if missing, watches it, and patches its keep-alive into it; patches only
# the release's own object.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "create"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  resourceNames: [{{ include "aegis.fullname" . | quote }}]
  verbs: ["patch"]
{{- end }}
{{- end }}

{{/*
Only when watching listed namespaces: kopf's namespace observer lists and watches namespaces
to know which of them exist (without it, kopf warns and assumes they all do). Watching every
namespace, it does not look at namespaces at all.
*/}}
{{- define "aegis.namespaceObserverRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
