{{/*
Names, labels and the pieces of a pod that carry the sidecar.

The pod pieces (token-sidecar.container, token-sidecar.volumes, token-sidecar.appVolumeMount,
token-sidecar.serviceAccountName, token-sidecar.configChecksum)
are a public interface: another chart that depends on this one includes them in its own pod
with a context holding this chart's values and the release, for example

  {{- $ts := dict "Values" (index .Values "token-sidecar") "Release" .Release "Capabilities" .Capabilities }}
  initContainers:
    {{- include "token-sidecar.container" $ts | nindent 4 }}

(docs/install.md). They therefore read only .Values, .Release and, when present, .Capabilities,
never .Chart: inside another chart .Chart is that chart, not this one.
*/}}

{{/* The chart name; a literal rather than .Chart.Name so that other charts compute it too. */}}
{{- define "token-sidecar.name" -}}
{{- default "token-sidecar" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of every object: <release>-token-sidecar unless the release already holds it. */}}
{{- define "token-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "token-sidecar.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version for the helm.sh/chart label. */}}
{{- define "token-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object this chart renders. */}}
{{- define "token-sidecar.labels" -}}
helm.sh/chart: {{ include "token-sidecar.chart" . }}
{{ include "token-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: token-sidecar
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels the Deployment selects its pods by. */}}
{{- define "token-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "token-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The pods the Service and the PodMonitor select: service.selector, else this chart's pods. */}}
{{- define "token-sidecar.podSelector" -}}
{{- if .Values.service.selector }}
{{- toYaml .Values.service.selector }}
{{- else }}
{{- include "token-sidecar.selectorLabels" . }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the pod runs as and the Vault role is bound to. */}}
{{- define "token-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "token-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: the digest wins over the tag. */}}
{{- define "token-sidecar.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{/* "true" when the Vault login uses the projected service-account token. */}}
{{- define "token-sidecar.usesServiceAccountJwt" -}}
{{- if has (.Values.config.vault.auth.method | default "kubernetes") (list "kubernetes" "jwt") }}true{{ end }}
{{- end }}

{{/* Where the sidecar reads its configuration. */}}
{{- define "token-sidecar.configFile" -}}
/etc/token-sidecar/config.yaml
{{- end }}

{{/* A checksum of the rendered configuration, for a pod annotation that rolls pods on change. */}}
{{- define "token-sidecar.configChecksum" -}}
{{- include "token-sidecar.config" . | sha256sum }}
{{- end }}

{{/* An HTTP probe on the sidecar's port; . is (dict "path" ... "port" ... "settings" ...). */}}
{{- define "token-sidecar.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{- with .settings }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The sidecar container, as one item of a container list. In native mode (the default) it
belongs in initContainers: restartPolicy Always makes it a native sidecar, and the startup
probe on /readyz holds back the containers after it until the first token is published. In
classic mode it belongs in containers.
*/}}
{{- define "token-sidecar.container" -}}
{{- $v := .Values.sidecar -}}
{{- include "token-sidecar.checkKubeVersion" . -}}
- name: {{ $v.name }}
  image: {{ include "token-sidecar.imageRef" $v.image | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if eq $v.mode "native" }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --config
    - {{ include "token-sidecar.configFile" . }}
  env:
    # `token-sidecar check` in `kubectl exec` finds the same file without --config.
    - name: TOKEN_SIDECAR_CONFIG
      value: {{ include "token-sidecar.configFile" . }}
    # The pod's identity: this replica's name in coordination claims, and the object of Events.
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: POD_UID
      valueFrom:
        fieldRef:
          fieldPath: metadata.uid
    {{- if .Values.events.enabled }}
    # The source host of Events, as the kubelet's own Events name their node.
    - name: NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    {{- end }}
    {{- with $v.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: metrics
      containerPort: {{ $v.port }}
      protocol: TCP
  startupProbe:
    {{- include "token-sidecar.probe" (dict "path" "/readyz" "port" $v.port "settings" $v.startupProbe) | nindent 4 }}
  livenessProbe:
    {{- include "token-sidecar.probe" (dict "path" "/livez" "port" $v.port "settings" $v.livenessProbe) | nindent 4 }}
  readinessProbe:
    {{- include "token-sidecar.probe" (dict "path" "/readyz" "port" $v.port "settings" $v.readinessProbe) | nindent 4 }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: token-sidecar-config
      mountPath: {{ dir (include "token-sidecar.configFile" .) }}
      readOnly: true
    - name: token-sidecar-tokens
      mountPath: {{ .Values.tokens.mountPath }}
    {{- if .Values.journal.enabled }}
    - name: token-sidecar-journal
      mountPath: {{ .Values.journal.mountPath }}
    {{- end }}
    {{- if include "token-sidecar.usesServiceAccountJwt" . }}
    - name: token-sidecar-vault-jwt
      mountPath: {{ .Values.serviceAccountToken.mountPath }}
      readOnly: true
    {{- end }}
    {{- if .Values.sidecar.approle.secretName }}
    - name: token-sidecar-approle
      mountPath: {{ .Values.sidecar.approle.mountPath }}
      readOnly: true
    {{- end }}
    {{- if .Values.events.enabled }}
    # The Kubernetes API token for Events, in the sidecar only (the pod does not automount it).
    - name: token-sidecar-kube-api
      mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      readOnly: true
    {{- end }}
    {{- with $v.volumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The volumes the sidecar needs, as items of the pod's volume list. */}}
{{- define "token-sidecar.volumes" -}}
- name: token-sidecar-config
  configMap:
    name: {{ include "token-sidecar.fullname" . }}
- name: token-sidecar-tokens
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.tokens.sizeLimit }}
{{- if .Values.journal.enabled }}
- name: token-sidecar-journal
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.journal.sizeLimit }}
{{- end }}
{{- if include "token-sidecar.usesServiceAccountJwt" . }}
- name: token-sidecar-vault-jwt
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .Values.serviceAccountToken.audience }}
          expirationSeconds: {{ .Values.serviceAccountToken.expirationSeconds }}
          path: token
{{- end }}
{{- if .Values.sidecar.approle.secretName }}
- name: token-sidecar-approle
  secret:
    secretName: {{ .Values.sidecar.approle.secretName }}
{{- end }}
{{- if .Values.events.enabled }}
- name: token-sidecar-kube-api
  projected:
    sources:
      - serviceAccountToken:
          expirationSeconds: 3607
          path: token
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end }}
{{- end }}

{{/* The token volume in the app container: read-only, at tokens.mountPath. */}}
{{- define "token-sidecar.appVolumeMount" -}}
- name: token-sidecar-tokens
  mountPath: {{ .Values.tokens.mountPath }}
  readOnly: true
{{- end }}

{{/* Native sidecars need Kubernetes 1.29 (beta, on by default); stop before a cluster drops them. */}}
{{- define "token-sidecar.checkKubeVersion" -}}
{{- if and (eq .Values.sidecar.mode "native") .Capabilities }}
{{- if semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version }}
{{- fail (printf "token-sidecar: sidecar.mode native needs Kubernetes >= 1.29 (native sidecar containers); this cluster is %s. Set sidecar.mode: classic." .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" when a credential tells its app by signal: the sidecar must see the app's processes.
*/}}
{{- define "token-sidecar.notifiesBySignal" -}}
{{- range $credential := .Values.config.credentials | default (list) -}}
{{- if (($credential.notify | default dict).signal) -}}true{{- end -}}
{{- end -}}
{{- end -}}
