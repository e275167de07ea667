{{/*
The sidecar's config.yaml, written as JSON (a subset of YAML that the sidecar reads without
importing a YAML parser), built from .Values.config with exactly the sidecar's keys
(sidecar/config.py), plus what only the chart knows: where the volumes are mounted.

Filled in unless set: vault.auth.role (the full name) and vault.auth.jwt_file (the projected
token) for the kubernetes and jwt methods; vault.auth.role_id_file and secret_id_file when
sidecar.approle.secretName is set; credentials[].output_dir (<tokens.mountPath>/<name>);
credentials[].file_group (podSecurityContext.fsGroup); server.address (0.0.0.0:<sidecar.port>).
Always set by the chart: journal.dir (journal.enabled) and events.enabled (events.enabled).

Empty strings and nulls are dropped, so an unset key takes the sidecar's own default.
Combinations the sidecar would reject, or that cannot work in this pod, stop the render.
*/}}
{{- define "token-sidecar.config" -}}
{{- $root := . -}}
{{- $v := .Values -}}
{{- $cfg := include "token-sidecar.pruned" $v.config | fromJson -}}

{{- $vault := get $cfg "vault" | default (dict) -}}
{{- $auth := get $vault "auth" | default (dict) -}}
{{- $method := get $auth "method" | default "kubernetes" -}}
{{- $_ := set $auth "method" $method -}}
{{- if has $method (list "kubernetes" "jwt") -}}
  {{- if not (hasKey $auth "role") -}}
    {{- $_ := set $auth "role" (include "token-sidecar.fullname" $root) -}}
  {{- end -}}
  {{- if not (hasKey $auth "jwt_file") -}}
    {{- $_ := set $auth "jwt_file" (printf "%s/token" (trimSuffix "/" $v.serviceAccountToken.mountPath)) -}}
  {{- end -}}
{{- end -}}
{{- if eq $method "approle" -}}
  {{- $approle := $v.sidecar.approle -}}
  {{- if $approle.secretName -}}
    {{- $base := trimSuffix "/" $approle.mountPath -}}
    {{- if not (hasKey $auth "role_id_file") -}}
      {{- $_ := set $auth "role_id_file" (printf "%s/role_id" $base) -}}
    {{- end -}}
    {{- if not (hasKey $auth "secret_id_file") -}}
      {{- $_ := set $auth "secret_id_file" (printf "%s/secret_id" $base) -}}
    {{- end -}}
  {{- end -}}
  {{- if not (and (hasKey $auth "role_id_file") (hasKey $auth "secret_id_file")) -}}
    {{- fail "token-sidecar: config.vault.auth.method approle needs sidecar.approle.secretName (a Secret with role_id and secret_id), or role_id_file and secret_id_file on volumes you mount" -}}
  {{- end -}}
{{- end -}}
{{- $_ := set $vault "auth" $auth -}}
{{- $_ := set $cfg "vault" $vault -}}

{{- $tokenDir := trimSuffix "/" $v.tokens.mountPath -}}
{{- $credentials := list -}}
{{- $names := dict -}}
{{- range $index, $credential := get $cfg "credentials" | default (list) -}}
  {{- $name := toString $credential.name -}}
  {{- if hasKey $names $name -}}
    {{- fail (printf "token-sidecar: config.credentials[%d].name: duplicate name %q" $index $name) -}}
  {{- end -}}
  {{- $_ := set $names $name true -}}
  {{- if hasKey $credential "output_dir" -}}
    {{- if not (hasPrefix (printf "%s/" $tokenDir) (clean $credential.output_dir)) -}}
      {{- fail (printf "token-sidecar: config.credentials[%d].output_dir: must be below tokens.mountPath (%s), the only volume the app can read" $index $tokenDir) -}}
    {{- end -}}
  {{- else -}}
    {{- $_ := set $credential "output_dir" (printf "%s/%s" $tokenDir $name) -}}
  {{- end -}}
  {{- if and (not (hasKey $credential "file_group")) (hasKey ($v.podSecurityContext | default (dict)) "fsGroup") -}}
    {{- $_ := set $credential "file_group" $v.podSecurityContext.fsGroup -}}
  {{- end -}}
  {{- $credentials = append $credentials $credential -}}
{{- end -}}
{{- $_ := set $cfg "credentials" $credentials -}}

{{- $server := get $cfg "server" | default (dict) -}}
{{- $port := toString $v.sidecar.port -}}
{{- if hasKey $server "address" -}}
  {{- if not (hasSuffix (printf ":%s" $port) $server.address) -}}
    {{- fail (printf "token-sidecar: config.server.address must end in :%s (sidecar.port), which the probes and the Service use" $port) -}}
  {{- end -}}
{{- else -}}
  {{- $_ := set $server "address" (printf "0.0.0.0:%s" $port) -}}
{{- end -}}
{{- $_ := set $cfg "server" $server -}}

{{- if $v.journal.enabled -}}
  {{- $_ := set $cfg "journal" (dict "dir" $v.journal.mountPath) -}}
{{- end -}}
{{- if $v.events.enabled -}}
  {{- $_ := set $cfg "events" (dict "enabled" true) -}}
{{- end -}}
{{- toPrettyJson $cfg -}}
{{- end -}}

{{/*
A copy of a map without empty strings, nulls and maps left empty, recursing into maps and into
maps inside lists; returned as JSON for fromJson.
*/}}
{{- define "token-sidecar.pruned" -}}
{{- $out := dict -}}
{{- range $key, $value := . -}}
  {{- if kindIs "map" $value -}}
    {{- $inner := include "token-sidecar.pruned" $value | fromJson -}}
    {{- if $inner -}}
      {{- $_ := set $out $key $inner -}}
    {{- end -}}
  {{- else if kindIs "slice" $value -}}
    {{- $items := list -}}
    {{- range $value -}}
      {{- if kindIs "map" . -}}
        {{- $items = append $items (include "token-sidecar.pruned" . | fromJson) -}}
      {{- else -}}
        {{- $items = append $items . -}}
      {{- end -}}
    {{- end -}}
    {{- $_ := set $out $key $items -}}
  {{- else if and (not (kindIs "invalid" $value)) (ne (toString $value) "") -}}
    {{- $_ := set $out $key $value -}}
  {{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
