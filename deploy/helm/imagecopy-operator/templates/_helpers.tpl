{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "imagecopy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already holds the chart name. */}}
{{- define "imagecopy.fullname" -}}
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

{{- define "imagecopy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imagecopy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagecopy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "imagecopy.labels" -}}
helm.sh/chart: {{ include "imagecopy.chart" . }}
{{ include "imagecopy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imagecopy
{{- end }}

{{- define "imagecopy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imagecopy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The container image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "imagecopy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True ("true") when more than one replica runs, i.e. Kopf peering is on. */}}
{{- define "imagecopy.peering" -}}
{{- if gt (int .Values.replicas) 1 }}true{{- end }}
{{- end }}

{{/*
RBAC rules every operator needs on ImageCopies, Secrets, ServiceAccounts and Events, in the
scope it watches (a ClusterRole for all namespaces, a Role per namespace otherwise).
Kopf: list/watch to follow objects, patch for finalizers, its progress annotations and status
(status is a subresource: patched separately). get: the operator re-reads an object.
Secrets: get only, by name from spec.*.secretRef or the default ServiceAccount's
imagePullSecrets; never list or watch. Events: create (Kopf posts them, never patches).
*/}}
{{- define "imagecopy.namespacedRules" -}}
- apiGroups: [imagecopy.dev]
  resources: [imagecopies]
  verbs: [get, list, watch, patch]
- apiGroups: [imagecopy.dev]
  resources: [imagecopies/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Validate values that a template cannot render sensibly. */}}
{{- define "imagecopy.validate" -}}
{{- if lt (int .Values.replicas) 0 }}
{{- fail "replicas must be >= 0" }}
{{- end }}
{{- if not (has .Values.logFormat (list "plain" "full" "json")) }}
{{- fail "logFormat must be one of plain, full, json" }}
{{- end }}
{{- if not (has .Values.logLevel (list "" "verbose" "debug" "quiet")) }}
{{- fail "logLevel must be one of \"\", verbose, debug, quiet" }}
{{- end }}
{{- end }}
