{{/* The release's resource name prefix: the release name, plus "-livehuman" unless it says so. */}}
{{- define "livehuman.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "livehuman.triton" -}}{{ include "livehuman.fullname" . }}-triton{{- end -}}
{{- define "livehuman.orchestrator" -}}{{ include "livehuman.fullname" . }}-orchestrator{{- end -}}
{{/* The headless Service that names each orchestrator pod (StatefulSet serviceName). */}}
{{- define "livehuman.peers" -}}{{ include "livehuman.fullname" . }}-peers{{- end -}}

{{- define "livehuman.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: `include "livehuman.selector" (list . "triton")` */}}
{{- define "livehuman.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}
