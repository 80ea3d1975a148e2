{{/* Chart name, at most 63 characters (a label value). */}}
{{- define "swarm-learning.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name of the operator's objects; the release name alone when it already contains the chart name. */}}
{{- define "swarm-learning.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "swarm-learning.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels selecting the operator pod; never change them (Deployment selectors are immutable). */}}
{{- define "swarm-learning.selectorLabels" -}}
app.kubernetes.io/name: {{ include "swarm-learning.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "swarm-learning.labels" -}}
helm.sh/chart: {{ include "swarm-learning.chart" . }}
{{ include "swarm-learning.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: swarm-learning
{{- end }}

{{- define "swarm-learning.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "swarm-learning.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag" of one entry of .Values.images; the tag defaults to the chart's appVersion. */}}
{{- define "swarm-learning.image" -}}
{{- $img := index .root.Values.images .name -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) }}
{{- end }}

{{/* Rules for the namespaced objects the operator reads and writes (Role or ClusterRole). */}}
{{- define "swarm-learning.namespacedRules" -}}
- apiGroups: [swarmlearning.dev]
  resources: [swarmnetworks, learningnodes, swarmtasks]
  verbs: [get, list, watch, patch, update]
- apiGroups: [swarmlearning.dev]
  resources: [swarmnetworks/status, learningnodes/status, swarmtasks/status]
  verbs: [get, patch, update]
# Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement is on.
- apiGroups: [swarmlearning.dev]
  resources: [swarmnetworks/finalizers, learningnodes/finalizers, swarmtasks/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete, patch]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [get]
- apiGroups: [""]
  resources: [services, secrets, configmaps, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
# The console of a SwarmNetwork with spec.rest.enabled: its Deployment, ServiceAccount and the RoleBinding
# of that ServiceAccount to the ClusterRole swarm-learning-console (bind: rbac.yaml's cluster rules).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, create, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [get, list, create, delete]
{{- end }}

{{/* A map of strings (labels, annotations, nodeSelector): values quoted, so `--set key=true` stays a string. */}}
{{- define "swarm-learning.stringMap" -}}
{{- range $k, $v := . }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}
