#!/usr/bin/env bash
# Build kube-apiserver for the envtest suite (inject/envtest_test.go), once.
#
#   tools/k8s/build-apiserver.sh    # prints the directory holding kube-apiserver
#
# No download tool (setup-envtest, the release tarballs) reaches this
# network, so the binary is built from the Go module proxy: the module next
# to this script requires k8s.io/kubernetes v1.34.4 and replaces its staging
# modules with their v0.34.4 releases. The binary goes to
#
#   ${WATERTIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/watertight}/kube-apiserver-v1.34.4/
#
# and is reused from there while it answers --version with v1.34.4: about 9
# minutes cold on 2 cores, nothing afterwards (and seconds with a warm Go
# build cache even when the directory is gone). etcd is not built: Debian's
# etcd-server package has it (see .ci/run).
#
# Progress goes to stderr; stdout is only the directory, for
#   KUBEBUILDER_ASSETS-style use: dir=$(tools/k8s/build-apiserver.sh)
set -euo pipefail

version=v1.34.4
here=$(cd "$(dirname "$0")" && pwd)
cache=${WATERTIGHT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/watertight}
out=$cache/kube-apiserver-$version
bin=$out/kube-apiserver

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "Kubernetes $version"; then
  echo "kube-apiserver $version: reusing $bin" >&2
  echo "$out"
  exit 0
fi

if ! grep -q "k8s.io/kubernetes $version" "$here/go.mod"; then
  echo "$0: $here/go.mod does not require k8s.io/kubernetes $version" >&2
  exit 1
fi

echo "kube-apiserver $version: building into $out (about 9 minutes on 2 cores with a cold Go build cache)" >&2
mkdir -p "$out"
start=$(date +%s)
# The version stamp kubernetes' own build (hack/lib/version.sh) sets: without
# it the binary calls itself v0.0.0-master. Static, like the release binary.
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
tmp=$(mktemp "$out/.kube-apiserver.XXXXXX")
trap 'rm -f "$tmp"' EXIT
(cd "$here" && CGO_ENABLED=0 GOWORK=off go build \
  -trimpath -ldflags "$ldflags" -o "$tmp" k8s.io/kubernetes/cmd/kube-apiserver)
"$tmp" --version >&2
mv -f "$tmp" "$bin"
echo "kube-apiserver $version: built in $(($(date +%s) - start))s" >&2
echo "$out"
