{{/* The services the chart deploys, in a stable order. */}}
{{- define "genmesh.services" -}}
router ttt tti audio sandbox gateway edge
{{- end -}}

{{/* Services that speak HTTP rather than gRPC: the REST gateway and the OpenAI-compatible edge. */}}
{{- define "genmesh.httpServices" -}}
gateway edge
{{- end -}}

{{/* Services clients call, each behind a ClusterIP Service; the others get headless Services. */}}
{{- define "genmesh.publicServices" -}}
router gateway edge
{{- end -}}

{{/* Whether a service speaks gRPC, as "true" or "": (include "genmesh.isGrpc" "ttt"). */}}
{{- define "genmesh.isGrpc" -}}
{{- if not (has . (splitList " " (include "genmesh.httpServices" .))) }}true{{ end -}}
{{- end -}}

{{/* Whether a service has a ClusterIP Service for clients, as "true" or "". */}}
{{- define "genmesh.isPublic" -}}
{{- if has . (splitList " " (include "genmesh.publicServices" .)) }}true{{ end -}}
{{- end -}}

{{/* Services the router balances over a headless Service. */}}
{{- define "genmesh.inferenceServices" -}}
ttt tti audio
{{- end -}}

{{/* The gRPC service names each process reports in grpc.health.v1 (besides ""). */}}
{{- define "genmesh.healthServiceName" -}}
{{- $names := dict "router" "genmesh.v1.GenerationService" "ttt" "genmesh.v1.InferenceService" "tti" "genmesh.v1.InferenceService" "audio" "genmesh.v1.InferenceService" "sandbox" "genmesh.v1.SandboxService" -}}
{{- index $names . -}}
{{- end -}}

{{- define "genmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "genmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one service's resources: (dict "ctx" $ "svc" "ttt"). */}}
{{- define "genmesh.svcName" -}}
{{- printf "%s-%s" (include "genmesh.fullname" .ctx | trunc 50 | trimSuffix "-") .svc -}}
{{- end -}}

{{- define "genmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "genmesh.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: genmesh
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one service: (dict "ctx" $ "svc" "ttt"). */}}
{{- define "genmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "genmesh.name" .ctx | quote }}
app.kubernetes.io/instance: {{ .ctx.Release.Name | quote }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/* Every label of one service's resources. */}}
{{- define "genmesh.svcLabels" -}}
{{ include "genmesh.labels" .ctx }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/* An `annotations:` block of commonAnnotations plus .extra, or nothing: (dict "ctx" $ "extra" dict). */}}
{{- define "genmesh.annotations" -}}
{{- with merge (deepCopy (.extra | default dict)) .ctx.Values.commonAnnotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* Metadata of a service's resources: (dict "ctx" $ "svc" "ttt" "annotations" dict). */}}
{{- define "genmesh.svcMetadata" -}}
metadata:
  name: {{ include "genmesh.svcName" . }}
  namespace: {{ .ctx.Release.Namespace | quote }}
  labels:
    {{- include "genmesh.svcLabels" . | nindent 4 }}
  {{- with include "genmesh.annotations" (dict "ctx" .ctx "extra" .annotations) }}
  {{- . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* An image reference; a digest wins over the tag. (dict "ctx" $ "image" .image) */}}
{{- define "genmesh.image" -}}
{{- $registry := .ctx.Values.global.imageRegistry | default .image.registry -}}
{{- $ref := printf "%s/%s" $registry .image.repository | trimPrefix "/" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $ref .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "genmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "genmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "genmesh.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-keys" (include "genmesh.fullname" .)) -}}
{{- end -}}

{{/* In-cluster DNS name of a service's Service: (dict "ctx" $ "svc" "ttt"). */}}
{{- define "genmesh.svcHost" -}}
{{- $suffix := ternary "" "-headless" (eq (include "genmesh.isPublic" .svc) "true") -}}
{{- printf "%s%s.%s.svc.%s" (include "genmesh.svcName" .) $suffix .ctx.Release.Namespace .ctx.Values.clusterDomain -}}
{{- end -}}

{{/*
The gRPC target the router dials for one service: the dns resolver returns every ready pod of the
headless Service, so the router's channel sees each replica.
*/}}
{{- define "genmesh.grpcTarget" -}}
{{- $values := index .ctx.Values .svc -}}
{{- printf "dns:///%s:%v" (include "genmesh.svcHost" .) $values.containerPort -}}
{{- end -}}

{{/* The router's bindings: chart services become headless-Service targets; disabled ones drop out. */}}
{{- define "genmesh.routerBindings" -}}
{{- $bindings := list -}}
{{- range .Values.router.bindings -}}
{{- $binding := omit . "service" -}}
{{- if .service -}}
{{- if (index $.Values .service).enabled -}}
{{- $_ := set $binding "addresses" (list (include "genmesh.grpcTarget" (dict "ctx" $ "svc" .service))) -}}
{{- $bindings = append $bindings $binding -}}
{{- end -}}
{{- else -}}
{{- $bindings = append $bindings $binding -}}
{{- end -}}
{{- end -}}
{{- toYaml $bindings -}}
{{- end -}}

{{/*
One service's section of the mesh config file: chart-computed settings, then values' `config`.
Host and port go in the environment instead, which overrides both this file and the image.
*/}}
{{- define "genmesh.configSection" -}}
{{- $values := index .ctx.Values .svc -}}
{{- $section := dict -}}
{{- if .ctx.Values.telemetry.otlpEndpoint -}}
{{- $_ := set $section "telemetry" (dict "otlp_endpoint" .ctx.Values.telemetry.otlpEndpoint) -}}
{{- end -}}
{{- if eq .svc "router" -}}
{{- $_ := set $section "bindings" (include "genmesh.routerBindings" .ctx | fromYamlArray) -}}
{{- if .ctx.Values.sandbox.enabled -}}
{{- $_ := set $section "sandbox_address" (include "genmesh.grpcTarget" (dict "ctx" .ctx "svc" "sandbox")) -}}
{{- end -}}
{{- with .ctx.Values.vault -}}
{{- if .enabled -}}
{{- $_ := set $section "vault" (dict "address" .address "auth" "kubernetes" "auth_mount" .authMount "role" .role "mount" .kvMount "path" .path "jwt_path" "/var/run/secrets/vault/token") -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq .svc "edge" -}}
{{- $router := include "genmesh.svcHost" (dict "ctx" .ctx "svc" "router") -}}
{{- $_ := set $section "router_address" (printf "%s:%v" $router .ctx.Values.router.service.port) -}}
{{- end -}}
{{- toYaml (mergeOverwrite $section (deepCopy $values.config)) -}}
{{- end -}}

{{/* kube-score exceptions from values (each justified there), as an annotations dict in YAML. */}}
{{- define "genmesh.policyAnnotations" -}}
{{- $checks := list -}}
{{- range .Values.policyExceptions -}}
{{- $checks = append $checks .check -}}
{{- end -}}
{{- if $checks -}}
{{- dict "kube-score/ignore" (join "," $checks) | toYaml -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}
