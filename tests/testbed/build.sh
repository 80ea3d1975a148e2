#!/usr/bin/env bash
# Builds the test-bed binaries (Kubernetes control plane, kubelet, kube-proxy, etcd, kwok, helm, CoreDNS,
# local-path-provisioner) from the pinned Go modules in tests/testbed/go/, and the pause image, into a
# versioned cache outside the repo; installs the Debian packages the real node needs when they are missing.
# Idempotent: a component whose binaries exist and whose stamp matches the current go.mod/go.sum/flags is
# reused without invoking Go at all.
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
COREDNS_VERSION=v1.15.0
LOCALPATH_VERSION=v0.0.30
PAUSE_VERSION=1  # bump when pause/pause.c or how it is packed changes

mkdir -p "$CACHE"

# One build at a time (make test and make cluster-up may run concurrently).
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
    echo ">>> testbed: another build holds $CACHE/.build.lock, waiting for it"
    flock 9
fi

# The real node's runtime comes from Debian: install what is missing (fresh CI machines), nothing else.
ensure_packages() {
    local -a want=()
    local check pkg
    while read -r check pkg; do
        [[ -e "$check" ]] || command -v "$check" >/dev/null 2>&1 || want+=("$pkg")
    done <<'PKGS'
containerd containerd
runc runc
/usr/lib/cni/bridge containernetworking-plugins
iptables iptables
ip iproute2
conntrack conntrack
gcc gcc
/usr/lib/x86_64-linux-gnu/libc.a libc6-dev
PKGS
    [[ ${#want[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
        echo "testbed: missing Debian packages for the real node: ${want[*]} (as root: apt-get install ${want[*]})" >&2
        exit 2
    fi
    echo ">>> testbed: installing Debian packages for the real node: ${want[*]}"
    # A fresh machine's package lists may be stale or empty: update once and retry.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}" \
        || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}"; }
}
ensure_packages

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
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy \
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

build_component coredns "$COREDNS_VERSION" "$HERE/go/coredns" "-s -w" swarmlearning.dev/testbed/coredns

build_component localpath "$LOCALPATH_VERSION" "$HERE/go/localpath" \
    "-s -w -X main.VERSION=$LOCALPATH_VERSION" github.com/rancher/local-path-provisioner

# The pod sandbox image (no registry to pull one from): a static pause binary packed as a docker archive
# for `ctr images import`; containerd's sandbox_image names it.
pause_dir="$CACHE/pause-$PAUSE_VERSION"
pause_stamp="$(cat "$HERE/pause/pause.c" "$HERE/image_archive.py" | sha256sum | cut -d' ' -f1)"
if [[ "${SWARM_TESTBED_FORCE:-0}" == 1 || ! -s "$pause_dir/pause.tar" || "$(cat "$pause_dir/stamp" 2>/dev/null)" != "$pause_stamp" ]]; then
    mkdir -p "$pause_dir"
    rm -f "$pause_dir/stamp"
    gcc -static -Os -s -o "$pause_dir/pause" "$HERE/pause/pause.c"
    python3 "$HERE/image_archive.py" --ref "swarmlearning/pause:testbed-$PAUSE_VERSION" \
        --file "/pause=$pause_dir/pause" --entrypoint /pause -o "$pause_dir/pause.tar" >"$pause_dir/id"
    echo "$pause_stamp" >"$pause_dir/stamp"
    echo ">>> testbed: pause image swarmlearning/pause:testbed-$PAUSE_VERSION written to $pause_dir/pause.tar"
else
    echo ">>> testbed: pause image is up to date in $pause_dir"
fi

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
