#!/usr/bin/env bash
# Builds the test-bed binaries (Kubernetes control plane, etcd, kwok, helm) from the pinned Go modules in
# tests/testbed/go/ into a versioned cache outside the repo. Idempotent: a component whose binaries exist
# and whose stamp matches the current go.mod/go.sum/flags is reused without invoking Go at all.
#
#   SWARM_TESTBED_CACHE  cache root (default ~/.cache/swarm-learning/testbed)
#   SWARM_TESTBED_FORCE  set to 1 to rebuild even when the stamp matches
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${SWARM_TESTBED_CACHE:-$HOME/.cache/swarm-learning/testbed}"

# Pins. tests/testbed/binaries.py carries the same numbers (it finds the binaries by them).
K8S_VERSION=v1.34.4
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0

mkdir -p "$CACHE"

# One build at a time (make test and make cluster-up may run concurrently).
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
    echo ">>> testbed: another build holds $CACHE/.build.lock, waiting for it"
    flock 9
fi

need_go() {
    command -v go >/dev/null || { echo "testbed: 'go' is not on PATH; install Go >= 1.26 to build $1" >&2; exit 2; }
}

# stamp_of MODULE_DIR EXTRA... : hash of what decides the binaries (pins and flags; a newer Go alone does
# not force a rebuild).
stamp_of() {
    local mod="$1"; shift
    { cat "$mod/go.mod" "$mod/go.sum"; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1
}

# build_component NAME VERSION MODULE_DIR LDFLAGS PKG... : builds each package into CACHE/NAME-VERSION/bin.
build_component() {
    local name="$1" version="$2" mod="$3" ldflags="$4"; shift 4
    local dir="$CACHE/$name-$version" stamp want missing=0 pkg bin
    want="$(stamp_of "$mod" "$ldflags" "$@")"
    for pkg in "$@"; do
        [[ -x "$dir/bin/$(basename "$pkg")" ]] || missing=1
    done
    if [[ "$missing" == 0 && "${SWARM_TESTBED_FORCE:-0}" != 1 && -f "$dir/stamp" && "$(cat "$dir/stamp")" == "$want" ]]; then
        echo ">>> testbed: $name $version is up to date in $dir/bin"
        return 0
    fi
    need_go "$name $version"
    mkdir -p "$dir/bin"
    rm -f "$dir/stamp"
    local total_start=$SECONDS
    for pkg in "$@"; do
        bin="$(basename "$pkg")"
        local start=$SECONDS
        echo ">>> testbed: building $bin ($name $version) into $dir/bin (a cold build takes minutes)"
        # Output to a temp name and rename, so an interrupted build never leaves a half-written binary.
        (cd "$mod" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" \
            go build -trimpath -ldflags "$ldflags" -o "$dir/bin/.$bin.tmp" "$pkg")
        mv -f "$dir/bin/.$bin.tmp" "$dir/bin/$bin"
        echo "    $bin built in $((SECONDS - start)) s"
    done
    echo "$want" >"$dir/stamp"
    echo ">>> testbed: $name $version built in $((SECONDS - total_start)) s"
}

K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=34 -X $pkg.gitTreeState=clean"
done
build_component k8s "$K8S_VERSION" "$HERE/go/kubernetes" "$K8S_LDFLAGS" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl \
    ./cmd/etcd

build_component kwok "$KWOK_VERSION" "$HERE/go/kwok" \
    "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    sigs.k8s.io/kwok/cmd/kwok

# Like helm's release build: the default Kubernetes version for `helm template`/lint follows the
# client-go it was built with (client-go v0.X.Y -> Kubernetes 1.X).
HELM_LDFLAGS="-s -w"
for v in version="$HELM_VERSION" gitTreeState=clean; do
    HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.$v"
done
HELM_K8S_MINOR="$(grep -E '^[[:space:]]*k8s.io/client-go v0\.' "$HERE/go/helm/go.mod" | sed -E 's/.* v0\.([0-9]+)\..*/\1/')"
for pkg in pkg/lint/rules pkg/chartutil; do
    HELM_LDFLAGS+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
build_component helm "$HELM_VERSION" "$HERE/go/helm" "$HELM_LDFLAGS" helm.sh/helm/v3/cmd/helm

# kwok's own default stages (node initialize + lease heartbeat, pod ready/complete/delete: what kwokctl
# configures), taken from the pinned module so they always match the kwok binary.
stages="$CACHE/kwok-$KWOK_VERSION/stages.yaml"
if [[ ! -s "$stages" || "$CACHE/kwok-$KWOK_VERSION/stamp" -nt "$stages" ]]; then
    need_go "the kwok stage config"
    kwok_src="$(cd "$HERE/go/kwok" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    {
        for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
                 pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
            echo "---"
            cat "$kwok_src/kustomize/stage/$f"
        done
    } >"$stages.tmp"
    mv -f "$stages.tmp" "$stages"
    echo ">>> testbed: wrote kwok default stages to $stages"
fi
echo ">>> testbed: binaries ready under $CACHE"
