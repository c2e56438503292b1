{{/*
Names. The full name is at most 40 characters so that "<fullname>-callbacks-metrics" (the
longest suffix) stays a valid 63-character DNS label.
*/}}
{{- define "sms-connector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "sms-connector.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sms-connector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sms-connector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sms-connector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Labels. Call with (dict "root" $ "component" "dispatch"): every object carries the
recommended app.kubernetes.io/* labels; component says which part of the release it is.
*/}}
{{- define "sms-connector.labels" -}}
helm.sh/chart: {{ include "sms-connector.chart" .root }}
{{ include "sms-connector.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: sms-connector
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component (a role's pods, or a non-pod part such as "config"). */}}
{{- define "sms-connector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sms-connector.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sms-connector.roleName" -}}
{{- printf "%s-%s" (include "sms-connector.fullname" .root) .role }}
{{- end }}

{{/* The roles that are enabled, in a fixed order. */}}
{{- define "sms-connector.enabledRoles" -}}
{{- $roles := list }}
{{- range $role := list "dispatch" "callbacks" "pollers" }}
{{- if (index $.Values $role).enabled }}
{{- $roles = append $roles $role }}
{{- end }}
{{- end }}
{{- toJson $roles }}
{{- end }}

{{- define "sms-connector.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The topic contract (files/topics.json, generated from topics/topics.toml). */}}
{{- define "sms-connector.topics" -}}
{{- .Files.Get "files/topics.json" }}
{{- end }}

{{- define "sms-connector.inputTopic" -}}
{{- $topics := include "sms-connector.topics" . | fromJson }}
{{- toJson $topics.outbound }}
{{- end }}

{{/* The dispatch consumer group: config.kafka.group_id, else the worker's default. */}}
{{- define "sms-connector.groupId" -}}
{{- $kafka := default dict .Values.config.kafka }}
{{- default "sms-connector-dispatch" $kafka.group_id }}
{{- end }}

{{/* The transactional ids' prefix (exactly-once, #16): config.kafka.transactional_id_prefix, else
the worker's default. Every id the worker uses is "<prefix>-...". */}}
{{- define "sms-connector.transactionalIdPrefix" -}}
{{- $kafka := default dict .Values.config.kafka }}
{{- default "sms-connector" $kafka.transactional_id_prefix }}
{{- end }}

{{/* "true" unless config.kafka.exactly_once is false (the worker's default is on). */}}
{{- define "sms-connector.exactlyOnce" -}}
{{- $kafka := default dict .Values.config.kafka }}
{{- if not (and (hasKey $kafka "exactly_once") (eq (toString $kafka.exactly_once) "false")) }}true{{ end }}
{{- end }}

{{- define "sms-connector.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "sms-connector.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{- define "sms-connector.kafkaUserName" -}}
{{- include "sms-connector.fullname" . }}
{{- end }}

{{/* SASL username: kafka.sasl.username, else the Strimzi KafkaUser. */}}
{{- define "sms-connector.saslUsername" -}}
{{- if .Values.kafka.sasl.username }}
{{- .Values.kafka.sasl.username }}
{{- else if .Values.strimzi.user.enabled }}
{{- include "sms-connector.kafkaUserName" . }}
{{- end }}
{{- end }}

{{/* Secret of the SASL password: kafka.sasl.passwordSecret, else the Strimzi KafkaUser's. */}}
{{- define "sms-connector.saslPasswordSecret" -}}
{{- if .Values.kafka.sasl.passwordSecret.name }}
{{- .Values.kafka.sasl.passwordSecret.name }}
{{- else if and .Values.strimzi.user.enabled (eq .Values.strimzi.user.authentication "scram-sha-512") }}
{{- include "sms-connector.kafkaUserName" . }}
{{- end }}
{{- end }}

{{/* Secret of the client certificate: kafka.tls.clientCertSecret, else the Strimzi KafkaUser's. */}}
{{- define "sms-connector.clientCertSecret" -}}
{{- if .Values.kafka.tls.clientCertSecret.name }}
{{- .Values.kafka.tls.clientCertSecret.name }}
{{- else if and .Values.strimzi.user.enabled (eq .Values.strimzi.user.authentication "tls") (include "sms-connector.tls" .) }}
{{- include "sms-connector.kafkaUserName" . }}
{{- end }}
{{- end }}

{{- define "sms-connector.credentialsSecret" -}}
{{- if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- else if .Values.credentials.create }}
{{- printf "%s-credentials" (include "sms-connector.fullname" .) }}
{{- end }}
{{- end }}

{{/* Every credentials-Secret key that config sections and routes refer to, sorted, without duplicates. */}}
{{- define "sms-connector.credentialKeys" -}}
{{- $keys := list }}
{{- range $section, $settings := .Values.config }}
{{- range $setting, $key := (default dict (get (default dict $settings) "secretKeys")) }}
{{- $keys = append $keys $key }}
{{- end }}
{{- end }}
{{- range $name, $route := .Values.routes }}
{{- range $setting, $key := (default dict $route.secretKeys) }}
{{- $keys = append $keys $key }}
{{- end }}
{{- end }}
{{- toJson ($keys | uniq | sortAlpha) }}
{{- end }}

{{/*
The worker settings the ConfigMap renders: config, plus what the chart knows better than a
default (callbacks.public_url from the Ingress host, unless set).
*/}}
{{- define "sms-connector.config" -}}
{{- $config := deepCopy (default dict .Values.config) }}
{{- $ing := .Values.callbacks.ingress }}
{{- if and .Values.callbacks.enabled $ing.enabled $ing.host }}
{{- $callbacks := default dict (get $config "callbacks") }}
{{- if not (get $callbacks "public_url") }}
{{- $_ := set $callbacks "public_url" (printf "%s://%s" (ternary "https" "http" $ing.tls.enabled) $ing.host) }}
{{- end }}
{{- $_ := set $config "callbacks" $callbacks }}
{{- end }}
{{- toJson $config }}
{{- end }}

{{/* Where secrets are mounted (one projected volume). */}}
{{- define "sms-connector.secretsDir" -}}/var/run/secrets/sms-connector{{- end }}

{{/*
A value as an environment variable's text: integers without an exponent (Helm decodes
numbers as float64), everything else as Go prints it.
*/}}
{{- define "sms-connector.envValue" -}}
{{- $v := . }}
{{- if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) }}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/*
Prometheus label matchers of this release's scrape targets (the metrics Services the
ServiceMonitor selects): used by the alerts and the dashboard.
*/}}
{{- define "sms-connector.promSelector" -}}
namespace="{{ .Release.Namespace }}",service=~"{{ include "sms-connector.fullname" . }}-(dispatch|callbacks|pollers)-metrics"
{{- end }}
