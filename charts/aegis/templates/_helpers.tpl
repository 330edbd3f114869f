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
RBAC rules for the namespaced resources the operator reads and writes. Each rule is what a
code path calls; there is no `*` anywhere.
*/}}
{{- define "aegis.namespacedRules" -}}
# Reconcile all five kinds; kopf patches finalizers and its progress annotations.
- apiGroups: ["dr.aegis.dev"]
  resources: ["backuppolicies", "recoverypoints", "restores", "failoverplans", "drdrills"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Scheduled runs create RecoveryPoints; retention deletes them.
- apiGroups: ["dr.aegis.dev"]
  resources: ["recoverypoints"]
  verbs: ["create", "delete"]
# The operator owns every status write.
- apiGroups: ["dr.aegis.dev"]
  resources:
    - backuppolicies/status
    - recoverypoints/status
    - restores/status
    - failoverplans/status
    - drdrills/status
    - failoverapprovals/status
  verbs: ["get", "patch", "update"]
# FailoverApprovals are read (a plan acts on each once) and never created by the operator:
# creating one is the approvers' permission (see the aegis-failover-approver ClusterRole).
- apiGroups: ["dr.aegis.dev"]
  resources: ["failoverapprovals"]
  verbs: ["get", "list", "watch", "patch"]
# Events on the resources it reconciles (kopf posts core/v1 events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Encryption keys, S3/Route53 credentials and database logins, read by reference.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# The per-Job configuration handed to the agent.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "update", "patch", "delete"]
# Job pods: their state and the agent's result in their logs.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Backup, restore and drill Jobs, and FailoverPlan job steps.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
# FailoverPlan workload checks and scale steps.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale"]
  verbs: ["get", "patch", "update"]
{{- end }}

{{/* Rules that are cluster-scoped by nature, needed in both watch modes. */}}
{{- define "aegis.clusterRules" -}}
# kopf scans the CRDs to find the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# kopf follows namespaces to know which exist.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
