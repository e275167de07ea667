{{/*
The injector: a mutating admission webhook that adds the sidecar to annotated pods
(injector.enabled; docs/injector.md). Its objects carry their own name label,
token-sidecar-injector, so the sidecar's Service and monitors never select them.
*/}}

{{- define "token-sidecar.injector.fullname" -}}
{{- printf "%s-injector" (include "token-sidecar.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "token-sidecar.injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-sidecar.name" . | trunc 54 | trimSuffix "-" }}-injector
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "token-sidecar.injector.labels" -}}
helm.sh/chart: {{ include "token-sidecar.chart" . }}
{{ include "token-sidecar.injector.selectorLabels" . }}
app.kubernetes.io/component: injector
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: token-sidecar
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The Secret holding the webhook's serving certificate (tls.crt, tls.key). */}}
{{- define "token-sidecar.injector.tlsSecret" -}}
{{- if eq (include "token-sidecar.injector.tlsSource" .) "secret" }}
{{- .Values.injector.tls.secretName }}
{{- else }}
{{- printf "%s-tls" (include "token-sidecar.injector.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the TLS pair comes from: certManager, secret or helm (tls.source auto picks). */}}
{{- define "token-sidecar.injector.tlsSource" -}}
{{- $tls := .Values.injector.tls }}
{{- if ne $tls.source "auto" }}
{{- $tls.source }}
{{- else if and .Capabilities (.Capabilities.APIVersions.Has "cert-manager.io/v1") }}
{{- "certManager" }}
{{- else if $tls.secretName }}
{{- "secret" }}
{{- else }}
{{- "helm" }}
{{- end }}
{{- end }}

{{/* The DNS names the API server uses to reach the webhook's Service. */}}
{{- define "token-sidecar.injector.dnsNames" -}}
{{- $svc := include "token-sidecar.injector.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- toJson (list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) }}
{{- end }}

{{/*
The injector's config file: the sidecar's vault section (from config.vault) as the defaults
it stamps into pods, and the sidecar values (image, mode, port, volumes, resources) as the
template of every injected sidecar.
*/}}
{{- define "token-sidecar.injector.config" -}}
{{- $v := .Values }}
{{- $inj := $v.injector }}
{{- $raw := include "token-sidecar.pruned" ($v.config.vault | default (dict)) | fromJson }}
{{- $auth := get $raw "auth" | default (dict) }}
{{- $method := get $auth "method" | default "kubernetes" }}
{{- if not (has $method (list "kubernetes" "jwt")) }}
{{- fail (printf "token-sidecar: injector.enabled needs config.vault.auth.method kubernetes or jwt (a pod logs in with its own service account), not %s" $method) }}
{{- end }}
{{- $vaultAuth := dict "method" $method }}
{{- with get $auth "mount" }}{{ $_ := set $vaultAuth "mount" . }}{{ end }}
{{- with $inj.defaultRole }}{{ $_ := set $vaultAuth "role" . }}{{ end }}
{{- $vault := dict "auth" $vaultAuth }}
{{- range $key := list "address" "namespace" "ca_cert" "allow_insecure_http" "timeout_seconds" }}
{{- if hasKey $raw $key }}{{ $_ := set $vault $key (get $raw $key) }}{{ end }}
{{- end }}
{{- $requests := dict }}
{{- $limits := dict }}
{{- range $kind := list "cpu" "memory" }}
{{- with (($v.sidecar.resources | default (dict)).requests | default (dict)) }}{{ if hasKey . $kind }}{{ $_ := set $requests $kind (toString (get . $kind)) }}{{ end }}{{ end }}
{{- with (($v.sidecar.resources | default (dict)).limits | default (dict)) }}{{ if hasKey . $kind }}{{ $_ := set $limits $kind (toString (get . $kind)) }}{{ end }}{{ end }}
{{- end }}
{{- $sc := $v.sidecar.securityContext | default (dict) }}
{{- $sidecar := dict
      "name" $v.sidecar.name
      "image" (include "token-sidecar.imageRef" $v.sidecar.image)
      "image_pull_policy" $v.sidecar.image.pullPolicy
      "mode" $v.sidecar.mode
      "port" $v.sidecar.port
      "tokens_mount_path" $v.tokens.mountPath
      "tokens_size_limit" (toString $v.tokens.sizeLimit)
      "journal" $v.journal.enabled
      "journal_mount_path" $v.journal.mountPath
      "journal_size_limit" (toString $v.journal.sizeLimit)
      "audience" $v.serviceAccountToken.audience
      "token_expiration_seconds" $v.serviceAccountToken.expirationSeconds
      "jwt_mount_path" $v.serviceAccountToken.mountPath
      "startup_failure_threshold" ($v.sidecar.startupProbe.failureThreshold | default 300)
      "resources" (dict "requests" $requests "limits" $limits)
      "log_level" ($v.config.log.level | default "info") }}
{{- if hasKey $sc "runAsUser" }}{{ $_ := set $sidecar "run_as_user" $sc.runAsUser }}{{ end }}
{{- if hasKey $sc "runAsGroup" }}{{ $_ := set $sidecar "run_as_group" $sc.runAsGroup }}{{ end }}
{{- $injector := dict
      "listen" (printf "0.0.0.0:%v" $inj.port)
      "health_address" (printf "0.0.0.0:%v" $inj.healthPort)
      "tls_cert_file" "/etc/token-sidecar-injector/tls/tls.crt"
      "tls_key_file" "/etc/token-sidecar-injector/tls/tls.key"
      "sidecar" $sidecar }}
{{- $log := dict "level" $inj.logLevel "format" ($v.config.log.format | default "json") }}
{{- toYaml (dict "vault" $vault "log" $log "injector" $injector) }}
{{- end }}
