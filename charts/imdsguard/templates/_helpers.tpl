{{/* The release's base name: imdsguard, or RELEASE-imdsguard for another release name. */}}
{{- define "imdsguard.fullname" -}}
{{- if contains "imdsguard" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-imdsguard" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "imdsguard.agent" -}}{{ include "imdsguard.fullname" . }}-agent{{- end -}}
{{- define "imdsguard.controller" -}}{{ include "imdsguard.fullname" . }}-controller{{- end -}}

{{/* Labels every object carries. */}}
{{- define "imdsguard.labels" -}}
app.kubernetes.io/part-of: imdsguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "imdsguard.agent.selector" -}}
app.kubernetes.io/name: imdsguard-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "imdsguard.controller.selector" -}}
app.kubernetes.io/name: imdsguard-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image reference: repository@digest, or repository:tag (the appVersion by default). */}}
{{- define "imdsguard.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Fails unless `cloud` is azure, aws or gcp. */}}
{{- define "imdsguard.checkCloud" -}}
{{- if not (has .Values.cloud (list "azure" "aws" "gcp")) -}}
{{- fail (printf "cloud %q: use azure, aws or gcp" .Values.cloud) -}}
{{- end -}}
{{- end -}}
