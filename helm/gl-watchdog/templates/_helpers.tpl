{{/*
Shared names, labels and environment of the gl-watchdog chart.
Component objects are named after the component (orchestrator.name, watchdog.name) so the runbook's
commands (deployment/orchestrator-service, -l app=orchestrator-service) work unchanged.
*/}}

{{- define "glw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "glw.orchestrator.name" -}}
{{- .Values.orchestrator.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "glw.watchdog.name" -}}
{{- .Values.watchdog.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "glw.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-secrets" (include "glw.watchdog.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "glw.policyConfigMapName" -}}
{{- printf "%s-policy" (include "glw.watchdog.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "glw.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Labels every object carries, except the instance label (see glw.labels). */}}
{{- define "glw.baseLabels" -}}
helm.sh/chart: {{ include "glw.chart" . }}
app.kubernetes.io/part-of: gl-watchdog
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of objects that belong to no single component. */}}
{{- define "glw.labels" -}}
{{ include "glw.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of the orchestrator pods (stable across upgrades: never add to these). */}}
{{- define "glw.orchestrator.selectorLabels" -}}
app: {{ include "glw.orchestrator.name" . }}
app.kubernetes.io/name: gl-orchestrator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "glw.watchdog.selectorLabels" -}}
app: {{ include "glw.watchdog.name" . }}
app.kubernetes.io/name: gl-watchdog
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "glw.orchestrator.labels" -}}
{{ include "glw.baseLabels" . }}
{{ include "glw.orchestrator.selectorLabels" . }}
app.kubernetes.io/component: orchestrator
{{- end }}

{{- define "glw.watchdog.labels" -}}
{{ include "glw.baseLabels" . }}
{{ include "glw.watchdog.selectorLabels" . }}
app.kubernetes.io/component: watchdog
{{- end }}

{{/* In-cluster URLs. */}}
{{- define "glw.orchestrator.url" -}}
{{- if .Values.watchdog.orchestratorUrl }}
{{- .Values.watchdog.orchestratorUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "glw.orchestrator.name" .) .Release.Namespace (int .Values.orchestrator.service.port) }}
{{- end }}
{{- end }}

{{- define "glw.watchdog.url" -}}
{{- printf "http://%s.%s.svc:%d" (include "glw.watchdog.name" .) .Release.Namespace (int .Values.watchdog.service.port) }}
{{- end }}

{{/*
The remediation policy document (policy.yaml of the policy ConfigMap): watchdog.policy, with the
throttle_concurrency playbook pointed at this chart's orchestrator Deployment when orchestrator.name is
not the watchdog's default (orchestrator-service), unless the policy already names one.
*/}}
{{- define "glw.policy" -}}
{{- $policy := deepCopy .Values.watchdog.policy }}
{{- $name := include "glw.orchestrator.name" . }}
{{- if ne $name "orchestrator-service" }}
{{- $playbooks := get $policy "playbooks" | default dict }}
{{- $throttle := get $playbooks "throttle_concurrency" | default dict }}
{{- $params := get $throttle "params" | default dict }}
{{- if not (get $params "deployment") }}
{{- $_ := set $params "deployment" $name }}
{{- end }}
{{- $_ := set $throttle "params" $params }}
{{- $_ := set $playbooks "throttle_concurrency" $throttle }}
{{- $_ := set $policy "playbooks" $playbooks }}
{{- end }}
{{- toYaml $policy }}
{{- end }}

{{/* Refuse settings that cannot work, with a message that says what to change. */}}
{{- define "glw.validate" -}}
{{- if and (not .Values.database.external) (or (gt (int .Values.orchestrator.replicaCount) 1) (gt (int .Values.watchdog.replicaCount) 1)) }}
{{- fail "more than one replica needs a shared store: set database.external=true with PostgreSQL URLs (embedded SQLite is per pod)" }}
{{- end }}
{{- if and (not .Values.redis.enabled) (or (gt (int .Values.orchestrator.replicaCount) 1) (gt (int .Values.watchdog.replicaCount) 1)) }}
{{- fail "more than one replica needs Redis for run ownership locks and sweep leader election: set redis.enabled=true and redis.url" }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- if and .Values.database.external (not (and .Values.database.orchestratorUrl .Values.database.watchdogUrl)) }}
{{- fail "database.external=true needs database.orchestratorUrl and database.watchdogUrl (or secrets.existingSecret with keys orchestrator-database-url and watchdog-database-url)" }}
{{- end }}
{{- if and .Values.redis.enabled (not .Values.redis.url) }}
{{- fail "redis.enabled=true needs redis.url (or secrets.existingSecret with key redis-url)" }}
{{- end }}
{{- if and .Values.watchdog.notifier.enabled (not .Values.watchdog.notifier.url) }}
{{- fail "watchdog.notifier.enabled=true needs watchdog.notifier.url (or secrets.existingSecret with key notifier-url)" }}
{{- end }}
{{- $slack := .Values.watchdog.slack }}
{{- if and $slack.enabled (not (and $slack.botToken $slack.signingSecret $slack.channel)) }}
{{- fail "watchdog.slack.enabled=true needs watchdog.slack.botToken, signingSecret and channel (or secrets.existingSecret with keys slack-bot-token and slack-signing-secret, and channel)" }}
{{- end }}
{{- $grafana := .Values.watchdog.grafana }}
{{- if and $grafana.apiUrl (not $grafana.apiToken) }}
{{- fail "watchdog.grafana.apiUrl is set: set watchdog.grafana.apiToken (or secrets.existingSecret with key grafana-api-token)" }}
{{- end }}
{{- $paging := .Values.watchdog.paging }}
{{- if and (has "pagerduty" $paging.escalationTargets) (not $paging.pagerduty.routingKey) }}
{{- fail "watchdog.paging.escalationTargets has pagerduty: set watchdog.paging.pagerduty.routingKey (or secrets.existingSecret with key pagerduty-routing-key)" }}
{{- end }}
{{- if and (has "email" $paging.escalationTargets) (not (and $paging.email.smtpHost $paging.email.to)) }}
{{- fail "watchdog.paging.escalationTargets has email: set watchdog.paging.email.smtpHost and watchdog.paging.email.to" }}
{{- end }}
{{- if and (has "opsgenie" $paging.escalationTargets) (not $paging.opsgenie.apiKey) }}
{{- fail "watchdog.paging.escalationTargets has opsgenie: set watchdog.paging.opsgenie.apiKey (or secrets.existingSecret with key opsgenie-api-key)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by both Deployments: . is a dict {root, component}. */}}
{{- define "glw.podScheduling" -}}
{{- $c := .component }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Startup, liveness and readiness probes on the named port "http": . is a dict {root}. Start-up
(schema migrations) gets its own budget so liveness can stay strict afterwards. */}}
{{- define "glw.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .root.Values.probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .root.Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  {{- toYaml .root.Values.probes.readiness | nindent 2 }}
{{- end }}
