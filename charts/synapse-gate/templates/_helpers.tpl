{{/*
Names, labels and the pieces of the pod spec that the gateway Deployment and the sidecar share.

Every template here but `synapse-gate.labels` needs only `.Values` and `.Release` from its
context: the release's root context, or, from an application chart,
`(dict "Values" .Values.<dependency> "Release" .Release)`. Names therefore never depend on
`.Chart`, so an application chart that depends on this one under an alias computes the same
ConfigMap names as the dependency that renders them.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "synapse-gate.name" -}}
{{- default "synapse-gate" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-synapse-gate`, the release name when it already contains the name, or fullnameOverride. */}}
{{- define "synapse-gate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "synapse-gate.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels that select this release's gateway pods. */}}
{{- define "synapse-gate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "synapse-gate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of every object this chart renders itself (needs the root context; `component` in it
overrides the component label, e.g. `merge (dict "component" "admin") .`).
*/}}
{{- define "synapse-gate.labels" -}}
{{ include "synapse-gate.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ include "synapse-gate.imageTag" . | quote }}
app.kubernetes.io/component: {{ .component | default .Values.mode }}
app.kubernetes.io/part-of: synapse-gate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "synapse-gate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "synapse-gate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The default image tag: Chart.yaml's appVersion, repeated here because the sidecar templates are
called from another chart, where `.Chart` is that chart's. The chart test checks the two agree.
*/}}
{{- define "synapse-gate.appVersion" -}}0.1.0{{- end }}

{{- define "synapse-gate.imageTag" -}}
{{- default (include "synapse-gate.appVersion" .) .Values.image.tag }}
{{- end }}

{{- define "synapse-gate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "synapse-gate.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "synapse-gate.configMapName" -}}
{{- default (printf "%s-config" (include "synapse-gate.fullname" .)) .Values.config.existingConfigMap }}
{{- end }}

{{- define "synapse-gate.policiesConfigMapName" -}}
{{- default (printf "%s-policies" (include "synapse-gate.fullname" .)) .Values.policies.existingConfigMap }}
{{- end }}

{{- define "synapse-gate.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "synapse-gate.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* Where the pieces are mounted; gate.yaml refers to them relative to its own directory. */}}
{{- define "synapse-gate.mountRoot" -}}/etc/synapse-gate{{- end }}

{{/* `ip:port` of the client listener: loopback for a sidecar, bindAddress for the gateway. */}}
{{- define "synapse-gate.listenAddress" -}}
{{- if eq .Values.mode "sidecar" }}
{{- printf "127.0.0.1:%d" (int .Values.sidecar.port) }}
{{- else }}
{{- include "synapse-gate.hostPort" (list .Values.gate.bindAddress .Values.gate.port) }}
{{- end }}
{{- end }}

{{- define "synapse-gate.adminAddress" -}}
{{- include "synapse-gate.hostPort" (list .Values.gate.bindAddress .Values.gate.adminPort) }}
{{- end }}

{{/* `host:port`, with IPv6 hosts in brackets. */}}
{{- define "synapse-gate.hostPort" -}}
{{- $host := index . 0 }}
{{- $port := int (index . 1) }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host $port }}
{{- else }}
{{- printf "%s:%d" $host $port }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the configured value, or preStop sleep + drain + 5 s. The gate
stops at the latest 5 s after its drain period, so anything shorter lets the kubelet's SIGKILL cut
requests that the drain would have finished.
*/}}
{{- define "synapse-gate.terminationGracePeriodSeconds" -}}
{{- $preStop := int .Values.gate.preStopSleepSeconds }}
{{- $drain := int .Values.gate.drainTimeoutSeconds }}
{{- $needed := add $preStop $drain }}
{{- if kindIs "invalid" .Values.gate.terminationGracePeriodSeconds }}
{{- add $needed 5 }}
{{- else }}
{{- $grace := int .Values.gate.terminationGracePeriodSeconds }}
{{- if le $grace $needed }}
{{- fail (printf "gate.terminationGracePeriodSeconds (%d) must be greater than gate.preStopSleepSeconds + gate.drainTimeoutSeconds (%d + %d = %d): the kubelet would kill the gate before its drain ends" $grace $preStop $drain $needed) }}
{{- end }}
{{- $grace }}
{{- end }}
{{- end }}

{{/*
The gate.yaml the config ConfigMap holds. Relative paths are resolved against its directory,
/etc/synapse-gate/config, so `../policies` is the policies ConfigMap, `../tls` the TLS Secret.
*/}}
{{- define "synapse-gate.gateYaml" -}}
{{- $listen := dict "address" (include "synapse-gate.listenAddress" .) "drain_timeout" (printf "%ds" (int .Values.gate.drainTimeoutSeconds)) }}
{{- if .Values.tls.enabled }}
{{- $tls := dict "cert" "../tls/tls.crt" "key" "../tls/tls.key" }}
{{- if .Values.tls.clientCA }}
{{- $_ := set $tls "client_ca" "../tls/ca.crt" }}
{{- end }}
{{- $_ := set $listen "tls" $tls }}
{{- end }}
{{- $listen = merge $listen (deepCopy .Values.config.listen) -}}
# Rendered by the synapse-gate Helm chart (release {{ .Release.Name }}, mode {{ .Values.mode }}).
# Mounted at {{ include "synapse-gate.mountRoot" . }}/config; relative paths are resolved from there.
# The pod also sets SYNAPSE_GATE_LISTEN_ADDRESS and SYNAPSE_GATE_ADMIN_ADDRESS to the addresses below.
listen:
  {{- toYaml $listen | nindent 2 }}
admin:
  address: {{ include "synapse-gate.adminAddress" . | quote }}
providers:
  {{- toYaml .Values.config.providers | nindent 2 }}
{{- with .Values.config.azure }}
azure:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.config.identities }}
identities:
  {{- toYaml . | nindent 2 }}
{{- end }}
upstreams:
  {{- toYaml .Values.config.upstreams | nindent 2 }}
policies: ../policies
audit:
  {{- toYaml .Values.config.audit | nindent 2 }}
{{- end }}

{{/*
The gate container. Context: `.Values`, `.Release` and `.sidecar` (true for the sidecar).
*/}}
{{- define "synapse-gate.container" -}}
{{- $root := include "synapse-gate.mountRoot" . }}
{{- $sidecar := .sidecar }}
{{- $adminPortName := ternary .Values.sidecar.adminPortName "admin" $sidecar }}
name: synapse-gate
image: {{ include "synapse-gate.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if and $sidecar .Values.sidecar.native }}
# A native sidecar: started before, and stopped after, the application's containers.
restartPolicy: Always
{{- end }}
args: ["serve"]
env:
  - name: SYNAPSE_GATE_CONFIG
    value: {{ printf "%s/config/gate.yaml" $root | quote }}
  # The pod spec owns the addresses (probes and ports below use the same numbers), whatever
  # gate.yaml says: these replace the file's listen.address and admin.address.
  - name: SYNAPSE_GATE_LISTEN_ADDRESS
    value: {{ include "synapse-gate.listenAddress" . | quote }}
  - name: SYNAPSE_GATE_ADMIN_ADDRESS
    value: {{ include "synapse-gate.adminAddress" . | quote }}
  - name: SYNAPSE_GATE_LOG_FORMAT
    value: {{ .Values.gate.logFormat | quote }}
  - name: RUST_LOG
    value: {{ .Values.gate.logLevel | quote }}
  {{- range $name, $ref := .Values.secretEnv }}
  - name: {{ $name }}
    valueFrom:
      secretKeyRef:
        name: {{ $ref.secretName }}
        key: {{ $ref.key }}
        {{- if hasKey $ref "optional" }}
        optional: {{ $ref.optional }}
        {{- end }}
  {{- end }}
  {{- with .Values.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  {{- if not $sidecar }}
  - name: {{ ternary "https" "http" .Values.tls.enabled }}
    containerPort: {{ .Values.gate.port }}
    protocol: TCP
  {{- end }}
  - name: {{ $adminPortName }}
    containerPort: {{ .Values.gate.adminPort }}
    protocol: TCP
startupProbe:
  httpGet:
    path: /healthz
    port: {{ $adminPortName }}
  {{- toYaml .Values.probes.startup | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ $adminPortName }}
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ $adminPortName }}
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- $preStop := int .Values.gate.preStopSleepSeconds }}
{{- if and (gt $preStop 0) (not (and $sidecar .Values.sidecar.native)) }}
lifecycle:
  # Keep serving while the endpoint removal spreads to kube-proxy and load balancers; SIGTERM
  # (stop accepting, drain) comes after. The kubelet sleeps itself: the image has no shell.
  preStop:
    sleep:
      seconds: {{ $preStop }}
{{- end }}
{{- with .Values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  # Whole directories, never subPath: a subPath mount never sees the kubelet's updates.
  - name: synapse-gate-config
    mountPath: {{ $root }}/config
    readOnly: true
  - name: synapse-gate-policies
    mountPath: {{ $root }}/policies
    readOnly: true
  {{- if .Values.tls.enabled }}
  - name: synapse-gate-tls
    mountPath: {{ $root }}/tls
    readOnly: true
  {{- end }}
  {{- if .Values.clusterCA.mount }}
  - name: synapse-gate-kube-ca
    mountPath: {{ $root }}/kube
    readOnly: true
  {{- end }}
  {{- range .Values.secretMounts }}
  - name: synapse-gate-secret-{{ .name }}
    mountPath: {{ $root }}/secrets/{{ .name }}
    readOnly: true
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
The volumes the container mounts. Context: `.Values`, `.Release` and `.secretMode` (file mode of
mounted Secrets: 0440 where the pod's fsGroup is the gate's group, 0444 otherwise).
*/}}
{{- define "synapse-gate.volumes" -}}
- name: synapse-gate-config
  configMap:
    name: {{ include "synapse-gate.configMapName" . }}
- name: synapse-gate-policies
  configMap:
    name: {{ include "synapse-gate.policiesConfigMapName" . }}
{{- if .Values.tls.enabled }}
- name: synapse-gate-tls
  secret:
    secretName: {{ include "synapse-gate.tlsSecretName" . }}
    defaultMode: {{ .secretMode }}
{{- end }}
{{- if .Values.clusterCA.mount }}
- name: synapse-gate-kube-ca
  configMap:
    name: kube-root-ca.crt
{{- end }}
{{- range .Values.secretMounts }}
- name: synapse-gate-secret-{{ .name }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: {{ $.secretMode }}
    {{- with .items }}
    items:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
For an application's own chart: the gate as a sidecar container. Put it under `initContainers:`
(sidecar.native, the default) or `containers:`, e.g.

  initContainers:
    {{- include "synapse-gate.sidecarContainer" (dict "Values" .Values.gate "Release" .Release) | nindent 4 }}

where `gate` is the name (or alias) of this chart among the application chart's dependencies,
with `mode: sidecar` in its values (that dependency renders the ConfigMaps the container mounts).
*/}}
{{- define "synapse-gate.sidecarContainer" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail (printf "synapse-gate.sidecarContainer: the synapse-gate values passed in have mode %q; set mode: sidecar, or the dependency renders a gateway Deployment instead of the sidecar's ConfigMaps" .Values.mode) }}
{{- end }}
{{- $container := include "synapse-gate.container" (dict "Values" .Values "Release" .Release "sidecar" true) | trim }}
{{- printf "- %s" ($container | indent 2 | trimPrefix "  ") }}
{{- end }}

{{/*
For an application's own chart: the volumes of the sidecar container, under the pod's `volumes:`.
Secrets are mounted with mode 0444, as the application pod's fsGroup is not the gate's.
*/}}
{{- define "synapse-gate.sidecarVolumes" -}}
{{- include "synapse-gate.volumes" (dict "Values" .Values "Release" .Release "secretMode" 292) }}
{{- end }}

{{/*
Checks that need more than one value, so the schema cannot express them; included by the
ConfigMap template, which every mode renders.
*/}}
{{- define "synapse-gate.validate" -}}
{{- if eq .Values.mode "gateway" }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable (or disable the budget)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail (printf "autoscaling.maxReplicas (%d) must not be below autoscaling.minReplicas (%d)" (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage)) }}
{{- fail "autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if eq (int .Values.gate.port) (int .Values.gate.adminPort) }}
{{- fail (printf "gate.port and gate.adminPort are both %d: the admin listener needs its own port" (int .Values.gate.port)) }}
{{- end }}
{{- else }}
{{- if eq (int .Values.sidecar.port) (int .Values.gate.adminPort) }}
{{- fail (printf "sidecar.port and gate.adminPort are both %d: the admin listener needs its own port" (int .Values.sidecar.port)) }}
{{- end }}
{{- end }}
{{- end }}
