{{/* Names ----------------------------------------------------------------------------------------------- */}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-kubetune, or the release name alone when it already says kubetune. */}}
{{- define "kubetune.fullname" -}}
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

{{/* <fullname>-<suffix>, kept within the 63 characters of a DNS label. Call with (list . "suffix"). */}}
{{- define "kubetune.component" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "kubetune.fullname" $root | trunc (int (sub 62 (len (index . 1)))) | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubetune.mlflow.selectorLabels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/component: mlflow
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Images ---------------------------------------------------------------------------------------------- */}}

{{/*
An image reference: repository@digest when a digest is given, else repository:tag, the tag defaulting to the
chart's appVersion (= kubetune's version, the tag the compiled pipeline uses). Call with (list . .Values.images.runtime).
*/}}
{{- define "kubetune.imageRef" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $ref := printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- if $image.digest -}}
{{- $ref = printf "%s@%s" $ref $image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "kubetune.runtimeImage" -}}
{{- include "kubetune.imageRef" (list . .Values.images.runtime) -}}
{{- end -}}

{{- define "kubetune.trainerImage" -}}
{{- include "kubetune.imageRef" (list . .Values.images.trainer) -}}
{{- end -}}

{{/* The MLflow server runs from the runtime image unless another is named. */}}
{{- define "kubetune.mlflowImage" -}}
{{- if .Values.mlflow.image.repository -}}
{{- include "kubetune.imageRef" (list . .Values.mlflow.image) -}}
{{- else -}}
{{- include "kubetune.runtimeImage" . -}}
{{- end -}}
{{- end -}}

{{/* Secrets and URLs ------------------------------------------------------------------------------------ */}}

{{/* The Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: an existing one, or the one the chart writes. */}}
{{- define "kubetune.s3SecretName" -}}
{{- default (include "kubetune.component" (list . "s3")) .Values.s3.existingSecret -}}
{{- end -}}

{{/* Whether any pod should read S3 keys from a Secret (none: an IAM role through the service account). */}}
{{- define "kubetune.s3HasSecret" -}}
{{- if or .Values.s3.existingSecret .Values.s3.accessKeyId -}}true{{- end -}}
{{- end -}}

{{/* The Secret with the judge endpoint's key: an existing one, the one the chart writes, or none (""). */}}
{{- define "kubetune.judgeSecretName" -}}
{{- if .Values.judge.existingSecret -}}
{{- .Values.judge.existingSecret -}}
{{- else if .Values.judge.apiKey -}}
{{- include "kubetune.component" (list . "judge") -}}
{{- end -}}
{{- end -}}

{{/* The key inside it: existingSecretKey for an existing Secret, api-key in the one the chart writes. */}}
{{- define "kubetune.judgeSecretKey" -}}
{{- if .Values.judge.existingSecret -}}
{{- .Values.judge.existingSecretKey -}}
{{- else -}}
api-key
{{- end -}}
{{- end -}}

{{- define "kubetune.backendStoreSecretName" -}}
{{- default (include "kubetune.component" (list . "mlflow-store")) .Values.mlflow.backendStore.existingSecret -}}
{{- end -}}

{{- define "kubetune.backendStoreSecretKey" -}}
{{- if .Values.mlflow.backendStore.existingSecret -}}
{{- .Values.mlflow.backendStore.existingSecretKey -}}
{{- else -}}
MLFLOW_BACKEND_STORE_URI
{{- end -}}
{{- end -}}

{{- define "kubetune.mlflow.fullname" -}}
{{- include "kubetune.component" (list . "mlflow") -}}
{{- end -}}

{{/* Where the sqlite file lives: the PVC's mount. */}}
{{- define "kubetune.mlflow.dataDir" -}}/mlflow{{- end -}}

{{/* The tracking URI the pipeline's steps use: the chart's server by its cluster DNS name, or an external one. */}}
{{- define "kubetune.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s.%s.svc.cluster.local:%d" (include "kubetune.mlflow.fullname" .) .Release.Namespace (int .Values.mlflow.service.port) -}}
{{- else -}}
{{- .Values.mlflow.externalTrackingUri -}}
{{- end -}}
{{- end -}}

{{/*
Host headers MLflow accepts. MLflow 3 refuses unknown Host headers (DNS-rebinding protection; the default
list is only localhost and private IPs), and in-cluster clients send the Service's DNS name, so list every
form of it, with and without a port. /health is exempt, so probes work whatever the list says.
*/}}
{{- define "kubetune.mlflow.allowedHosts" -}}
{{- $svc := include "kubetune.mlflow.fullname" . -}}
{{- $hosts := list "localhost" "localhost:*" "127.0.0.1" "127.0.0.1:*" -}}
{{- range $name := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) -}}
{{- $hosts = append $hosts $name -}}
{{- $hosts = append $hosts (printf "%s:*" $name) -}}
{{- end -}}
{{- if .Values.mlflow.ingress.enabled -}}
{{- $hosts = append $hosts .Values.mlflow.ingress.host -}}
{{- end -}}
{{- join "," (concat $hosts .Values.mlflow.extraAllowedHosts) -}}
{{- end -}}

{{/* Pipeline ------------------------------------------------------------------------------------------- */}}

{{/* The user's pipeline config (values.pipeline, else the demo in files/), as YAML. */}}
{{- define "kubetune.userPipeline" -}}
{{- if .Values.pipeline -}}
{{- toYaml .Values.pipeline -}}
{{- else -}}
{{- .Files.Get "files/demo-pipeline.yaml" -}}
{{- end -}}
{{- end -}}

{{/* kubetune-<pipeline>-<name>, as `kubetune submit` names it (PipelineConfig defaults: sft, kubetune). */}}
{{- define "kubetune.pipelineName" -}}
{{- $cfg := include "kubetune.userPipeline" . | fromYaml -}}
{{- default (printf "kubetune-%s-%s" (default "sft" $cfg.pipeline) (default "kubetune" $cfg.name)) .Values.kfp.pipelineName -}}
{{- end -}}

{{- define "kubetune.scheduleJobName" -}}
{{- default (printf "%s-schedule" (include "kubetune.pipelineName" .)) .Values.schedule.jobName -}}
{{- end -}}

{{/*
values.resources in the pipeline config's vocabulary: Helm's camelCase keys (gpuType, nodeSelector,
tolerationSeconds, podGroupPolicy) become kubetune's snake_case ones (gpu_type, node_selector, toleration_seconds,
pod_group_policy). The
config refuses unknown keys only when the Job runs, hence the schema's closed stage objects.
*/}}
{{- define "kubetune.stageResources" -}}
{{- $out := dict -}}
{{- range $step, $r := .Values.resources -}}
{{- $stage := dict -}}
{{- if hasKey $r "gpus" }}{{ $_ := set $stage "gpus" $r.gpus }}{{ end -}}
{{- if $r.gpuType }}{{ $_ := set $stage "gpu_type" $r.gpuType }}{{ end -}}
{{- if $r.cpu }}{{ $_ := set $stage "cpu" (toString $r.cpu) }}{{ end -}}
{{- if $r.memory }}{{ $_ := set $stage "memory" (toString $r.memory) }}{{ end -}}
{{- if $r.nodeSelector }}{{ $_ := set $stage "node_selector" $r.nodeSelector }}{{ end -}}
{{- $tolerations := list -}}
{{- range $t := $r.tolerations | default list -}}
{{- $copy := omit $t "tolerationSeconds" -}}
{{- if hasKey $t "tolerationSeconds" }}{{ $_ := set $copy "toleration_seconds" $t.tolerationSeconds }}{{ end -}}
{{- $tolerations = append $tolerations $copy -}}
{{- end -}}
{{- if $tolerations }}{{ $_ := set $stage "tolerations" $tolerations }}{{ end -}}
{{- if hasKey $r "nodes" }}{{ $_ := set $stage "nodes" $r.nodes }}{{ end -}}
{{- if $r.trainer }}{{ $_ := set $stage "trainer" $r.trainer }}{{ end -}}
{{- if $r.runtime }}{{ $_ := set $stage "runtime" $r.runtime }}{{ end -}}
{{- if $r.queueName }}{{ $_ := set $stage "queue_name" $r.queueName }}{{ end -}}
{{- if hasKey $r "keepJob" }}{{ $_ := set $stage "keep_job" $r.keepJob }}{{ end -}}
{{- if $r.jobTimeoutSeconds }}{{ $_ := set $stage "job_timeout_s" $r.jobTimeoutSeconds }}{{ end -}}
{{- if $r.podGroupPolicy }}{{ $_ := set $stage "pod_group_policy" $r.podGroupPolicy }}{{ end -}}
{{- if $r.volcanoQueue }}{{ $_ := set $stage "volcano_queue" $r.volcanoQueue }}{{ end -}}
{{- $_ := set $out $step $stage -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The pipeline config the registration Job compiles: values.pipeline, with the sections that describe this
cluster (images, resources, mlflow, s3, model_cache) written from the chart's values, so one `helm upgrade`
moves the chart's pods and the pipeline's steps together; and the judge's Secret (values.judge) added to its
env_secrets.
*/}}
{{- define "kubetune.pipelineConfig" -}}
{{- $cfg := include "kubetune.userPipeline" . | fromYaml -}}
{{- range $section, $value := dict "images" "images" "resources" "resources" "mlflow" "mlflow" "s3" "s3" "model_cache" "modelCache" -}}
{{- if hasKey $cfg $section -}}
{{- fail (printf "pipeline.%s: the chart writes this section of the pipeline config from values.%s; set it there instead" $section $value) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cfg "images" (dict "runtime" (include "kubetune.runtimeImage" .) "trainer" (include "kubetune.trainerImage" .)) -}}
{{- $_ := set $cfg "resources" (include "kubetune.stageResources" . | fromYaml) -}}
{{- $mlflow := dict "experiment" .Values.mlflow.experiment "credentials_secret" .Values.mlflow.credentialsSecret -}}
{{- with include "kubetune.trackingUri" . }}{{ $_ := set $mlflow "tracking_uri" . }}{{ end -}}
{{- $_ := set $cfg "mlflow" $mlflow -}}
{{- $s3 := dict "credentials_secret" (include "kubetune.s3SecretName" .) -}}
{{- with .Values.s3.endpoint }}{{ $_ := set $s3 "endpoint_url" . }}{{ end -}}
{{- with .Values.s3.artifactPrefix }}{{ $_ := set $s3 "artifact_prefix" . }}{{ end -}}
{{- $_ := set $cfg "s3" $s3 -}}
{{- $cache := dict "mount_path" .Values.modelCache.mountPath -}}
{{- with .Values.modelCache.pvc }}{{ $_ := set $cache "pvc" . }}{{ end -}}
{{- $_ := set $cfg "model_cache" $cache -}}
{{- with include "kubetune.judgeSecretName" . -}}
{{- /* the judge's key joins the config's env_secrets (kept as the user wrote them, else the config's default)
as the variable evaluation.judge_api_key_env names: the pipeline injects it into every step */ -}}
{{- $envVar := default "JUDGE_API_KEY" (get ($cfg.evaluation | default dict) "judge_api_key_env") -}}
{{- $secrets := dict "hf-credentials" (dict "HF_TOKEN" "HF_TOKEN") -}}
{{- if hasKey $cfg "env_secrets" }}{{ $secrets = $cfg.env_secrets | default dict }}{{ end -}}
{{- $keys := get $secrets . | default dict -}}
{{- $_ := set $keys (include "kubetune.judgeSecretKey" $) $envVar -}}
{{- $_ := set $secrets . $keys -}}
{{- $_ := set $cfg "env_secrets" $secrets -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pods ----------------------------------------------------------------------------------------------- */}}

{{/* A writable /tmp: the root filesystem is read-only, and Python, MLflow and kfp write temporary files. */}}
{{- define "kubetune.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{- define "kubetune.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "kubetune.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
checkov suppressions, as annotations on the resource they concern, each with its reason (README.md lists them).
Call with (list <image reference> <"CKV_ID=reason" ...>). The digest check is skipped only while the image
is referenced by tag: set images.*.digest and the suppression disappears.
*/}}
{{- define "kubetune.checkovSkips" -}}
{{- $skips := rest . -}}
{{- if not (contains "@sha256:" (first .)) -}}
{{- $skips = prepend $skips "CKV_K8S_43=image by tag by default: the tag is kubetune's version, the one the compiled pipeline uses; set images.*.digest to pin by digest" -}}
{{- end -}}
{{- range $i, $skip := $skips }}
checkov.io/skip{{ add1 $i }}: {{ $skip | quote }}
{{- end -}}
{{- end -}}
