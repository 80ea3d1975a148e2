"""The real node runs real pods: python3 from the base image with logs and exit codes, pod and Service
networking, cluster DNS, dynamic PVCs, in-cluster API access with a service-account token, and the
restricted Pod Security profile."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed.cluster import RealNodeCluster

pytestmark = pytest.mark.e2e

# Seconds for a pod to finish (start, run a few lines of Python, report): a few seconds normally.
POD_TIMEOUT = 120.0
PORT = 8080
# A tiny HTTP server that answers "<name> <path>" and stops at once on SIGTERM (as PID 1, Python would
# otherwise ignore it and the pod would take its whole grace period to stop).
SERVER = textwrap.dedent(
    f"""
    import http.server, os, signal, sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{{os.environ['HOSTNAME']}} {{self.path}}".encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
    http.server.ThreadingHTTPServer(("", {PORT}), Handler).serve_forever()
    """
)


def apply(cluster: RealNodeCluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def python_pod(
    cluster: RealNodeCluster, name: str, code: str, *, labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """A pod of the base image running ``python3 -c code`` once (restartPolicy Never)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": cluster.image("base"),
        "imagePullPolicy": "Never",
        "command": ["python3", "-u", "-c", code],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def run_to_end(cluster: RealNodeCluster, namespace: str, pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Create the pod, wait until it Succeeded or Failed; return the final pod and its log."""
    apply(cluster, namespace, pod)
    name = pod["metadata"]["name"]
    final = cluster.wait_for_pod(namespace, name, timeout=POD_TIMEOUT)
    return final, cluster.logs(namespace, name)


def expect_success(cluster: RealNodeCluster, namespace: str, pod: dict[str, Any]) -> str:
    final, log = run_to_end(cluster, namespace, pod)
    assert final["status"]["phase"] == "Succeeded", f"pod failed, log:\n{log}\nstatus: {final['status']}"
    return log


def start_server(cluster: RealNodeCluster, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    """A Running, Ready HTTP server pod (label app=<name>); returns the pod."""
    pod = python_pod(
        cluster,
        name,
        SERVER,
        labels={"app": name},
        container={"readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1}},
        **spec,
    )
    pod["spec"]["restartPolicy"] = "Always"
    apply(cluster, namespace, pod)
    cluster.kubectl(
        "wait", "--for=condition=Ready", f"pod/{name}", "-n", namespace, f"--timeout={POD_TIMEOUT:.0f}s"
    )
    return cluster.pod(namespace, name)


def service(name: str, *, headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": PORT}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def test_python_pod_runs_and_its_log_and_exit_code_are_seen(
    real_cluster: RealNodeCluster, namespace: str
) -> None:
    code = "import os, sys; print('hello from', os.uname().nodename, sys.version_info[:2])"
    final, log = run_to_end(real_cluster, namespace, python_pod(real_cluster, "hello", code))
    assert final["status"]["phase"] == "Succeeded"
    assert final["spec"]["nodeName"] == real_cluster.node_name
    assert log.startswith("hello from hello (3, "), log
    assert RealNodeCluster.exit_code(final) == 0


def test_failing_pod_ends_failed_with_its_exit_code(real_cluster: RealNodeCluster, namespace: str) -> None:
    code = "import sys; print('about to fail', flush=True); sys.exit(7)"
    final, log = run_to_end(real_cluster, namespace, python_pod(real_cluster, "fails", code))
    assert final["status"]["phase"] == "Failed"
    assert RealNodeCluster.exit_code(final) == 7
    assert log.strip() == "about to fail"


def test_pods_reach_each_other_directly_and_through_a_cluster_ip_service(
    real_cluster: RealNodeCluster, namespace: str
) -> None:
    server = start_server(real_cluster, namespace, "web")
    apply(real_cluster, namespace, service("web"))
    svc = json.loads(real_cluster.kubectl("get", "service", "web", "-n", namespace, "-o", "json").stdout)
    pod_ip, cluster_ip = server["status"]["podIP"], svc["spec"]["clusterIP"]
    assert pod_ip.startswith(real_cluster.host_ip.rsplit(".", 1)[0] + ".")  # on the node's bridge subnet
    # kube-proxy programs a new Service within a second or so (until then it rejects connections): retry.
    client = textwrap.dedent(
        f"""
        import time, urllib.request
        for url in ("http://{pod_ip}:{PORT}/direct", "http://{cluster_ip}/service", "http://web/by-name"):
            for attempt in range(50):
                try:
                    print(urllib.request.urlopen(url, timeout=10).read().decode()); break
                except OSError as e:
                    error = e; time.sleep(0.2)
            else:
                raise SystemExit(f"{{url}}: {{error}}")
        """
    )
    log = expect_success(real_cluster, namespace, python_pod(real_cluster, "client", client))
    assert log.splitlines() == ["web /direct", "web /service", "web /by-name"]


def test_headless_service_pod_name_resolves_through_coredns(
    real_cluster: RealNodeCluster, namespace: str
) -> None:
    # hostname + subdomain (= a headless Service's name) give a pod its own DNS name, as StatefulSets do.
    server = start_server(real_cluster, namespace, "peers", hostname="peer-0", subdomain="peers")
    apply(real_cluster, namespace, service("peers", headless=True))
    fqdn = f"peer-0.peers.{namespace}.svc.cluster.local"
    client = textwrap.dedent(
        f"""
        import socket, time, urllib.request
        for attempt in range(50):  # the EndpointSlice reaches CoreDNS within a second or two
            try:
                print(socket.gethostbyname("{fqdn}")); break
            except socket.gaierror:
                time.sleep(0.2)
        print(socket.gethostbyname("peer-0.peers"))  # the pod's search path completes the short name
        print(urllib.request.urlopen("http://peer-0.peers:{PORT}/", timeout=10).read().decode())
        print(open("/etc/resolv.conf").read())
        """
    )
    log = expect_success(real_cluster, namespace, python_pod(real_cluster, "resolver", client)).splitlines()
    assert log[:3] == [server["status"]["podIP"], server["status"]["podIP"], "peer-0 /"], log
    assert f"nameserver {real_cluster.host_ip}" in log


def test_pvc_without_storage_class_binds_dynamically_and_a_pod_writes_to_it(
    real_cluster: RealNodeCluster, namespace: str
) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    }
    apply(real_cluster, namespace, claim)
    writer = python_pod(
        real_cluster,
        "writer",
        "open('/data/result.txt', 'w').write('written by a pod\\n'); print('ok')",
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    )
    assert expect_success(real_cluster, namespace, writer).strip() == "ok"
    pvc = json.loads(real_cluster.kubectl("get", "pvc", "data", "-n", namespace, "-o", "json").stdout)
    assert pvc["status"]["phase"] == "Bound"
    assert pvc["spec"]["storageClassName"] == "local-path"  # the default class, filled in on admission
    pv = json.loads(real_cluster.kubectl("get", "pv", pvc["spec"]["volumeName"], "-o", "json").stdout)
    host_dir = Path((pv["spec"].get("hostPath") or pv["spec"]["local"])["path"])
    assert (host_dir / "result.txt").read_text() == "written by a pod\n"  # on the node's disk


def test_service_account_token_reaches_the_api_server_through_kubernetes_default_svc(
    real_cluster: RealNodeCluster, namespace: str
) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
    }
    apply(real_cluster, namespace, role, binding)
    client = textwrap.dedent(
        """
        import json, ssl, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        token, ns = open(f"{sa}/token").read(), open(f"{sa}/namespace").read()
        ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
        req = urllib.request.Request(f"https://kubernetes.default.svc/api/v1/namespaces/{ns}/pods",
                                     headers={"Authorization": f"Bearer {token}"})
        pods = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
        print(" ".join(p["metadata"]["name"] for p in pods["items"]))
        """
    )
    log = expect_success(real_cluster, namespace, python_pod(real_cluster, "in-cluster", client))
    assert log.split() == ["in-cluster"]


def test_restricted_pod_runs_non_root_with_read_only_root(
    real_cluster: RealNodeCluster, namespace: str
) -> None:
    # Enforce the restricted Pod Security Standard: the API server rejects the pod if it falls short.
    real_cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    code = textwrap.dedent(
        """
        import os
        try:
            open("/written", "w"); print("root fs writable")
        except OSError as e:
            print(f"uid={os.getuid()} gid={os.getgid()} errno={e.errno}")
        print(open("/proc/self/status").read().split("NoNewPrivs:")[1].split()[0],
              open("/proc/self/status").read().split("CapEff:")[1].split()[0],
              open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
        """
    )
    pod = python_pod(
        real_cluster,
        "restricted",
        code,
        securityContext={
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "runAsGroup": 65534,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        container={
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }
        },
    )
    log = expect_success(real_cluster, namespace, pod).splitlines()
    assert log[0] == "uid=65534 gid=65534 errno=30"  # EROFS
    no_new_privs, cap_eff, seccomp = log[1].split()
    assert (no_new_privs, int(cap_eff, 16), seccomp) == ("1", 0, "2")  # 2 = seccomp filter mode
