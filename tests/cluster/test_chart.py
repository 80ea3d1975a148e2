"""The Helm chart: lint, rendering (security, RBAC, ServiceMonitor, placement, namespaces, bad values) and a
real install into the test cluster, checked through the objects and the ServiceAccount's permissions.

The operator pod lands on a kwok node, so its container never really runs: the tests check the objects.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import CRD_NAMES
from tests.testbed import Cluster

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "swarm-learning"
KUBE_VERSION = "1.34.4"  # for rendering without a cluster (helm's own default may be older)
# Seconds to wait for the Deployment's pod to be created (kube-controller-manager).
POD_TIMEOUT = 60.0


def render(
    cluster: Cluster, *values: str, release: str = "rel", namespace: str = "swarm-system"
) -> list[Any]:
    """`helm template` with `--set` values; returns the rendered objects."""
    sets = [arg for value in values for arg in ("--set", value)]
    result = cluster.helm(
        "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, *sets
    )
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def one(objs: list[Any], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {[o['kind'] for o in objs]}"
    obj: dict[str, Any] = found[0]
    return obj


def pod_spec(objs: list[Any]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objs, "Deployment")["spec"]["template"]["spec"]
    return spec


CONSOLE_ROLES = (
    "swarm-learning-console",
    "swarm-learning-console-reviews",
    "swarm-learning-console-viewer",
    "swarm-learning-model-reader",
)
"""ClusterRoles the chart installs for the swarm consoles and their users (docs/console.md), not for the
operator."""


def all_rules(objs: list[Any]) -> list[dict[str, Any]]:
    """The rules of the operator's own (Cluster)Roles."""
    return [
        rule
        for o in objs
        if o["kind"] in ("ClusterRole", "Role") and o["metadata"]["name"] not in CONSOLE_ROLES
        for rule in o["rules"]
    ]


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_helm_lint(cluster: Cluster) -> None:
    on = ["serviceMonitor.enabled=true", "slMetrics.podMonitor.enabled=true", "grafanaDashboard.enabled=true"]
    for values in ([], [*on, "watchNamespaces={team-a,team-b}"]):
        sets = [arg for value in values for arg in ("--set", value)]
        result = cluster.helm(
            "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *sets, check=False
        )
        assert result.returncode == 0, f"helm lint {values}:\n{result.stdout}\n{result.stderr}"
        assert "0 chart(s) failed" in result.stdout


def test_default_render(cluster: Cluster) -> None:
    objs = render(cluster)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding"]
        + ["Service", "Deployment"]
        + ["ClusterRole"] * len(CONSOLE_ROLES)
    )
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = pod_spec(objs)
    assert spec["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    (container,) = spec["containers"]
    assert container["command"] == ["swarm-operator"]
    assert container["args"] == ["--metrics-port=8080", "--health-port=8081", "--all-namespaces"]
    assert container["image"] == "swarmlearning/operator:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SWARM_SN_IMAGE"] == "swarmlearning/sn:0.1.0"
    assert env["SWARM_SL_IMAGE"] == "swarmlearning/sl:0.1.0"
    assert env["SWARM_ML_IMAGE"] == "swarmlearning/ml:0.1.0"
    assert env["SWARM_CONSOLE_IMAGE"] == "swarmlearning/console:0.1.0"
    assert env["SWARM_CONSOLE_IMAGE_PULL_POLICY"] == "IfNotPresent"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    service = one(objs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(
    "values",
    [[], ["logLevel=debug", "watchNamespaces={team-a,team-b}", "metrics.port=9090", "health.port=9091"]],
    ids=["defaults", "namespaced-debug"],
)
def test_rendered_args_are_understood_by_the_operator(cluster: Cluster, values: list[str]) -> None:
    """The Deployment's args parse with swarm-operator's own argument parser, into the chart's values."""
    import logging

    from swarm_operator.main import parse_args

    (container,) = pod_spec(render(cluster, *values))["containers"]
    kopf_objects = logging.getLogger("kopf.objects")
    level = kopf_objects.level
    try:
        config = parse_args(container["args"])
    except SystemExit as e:  # argparse exits on unknown or bad arguments
        pytest.fail(f"swarm-operator rejects the chart's args {container['args']} (exit {e.code})")
    finally:
        kopf_objects.setLevel(level)  # parse_args tunes logging; leave other tests' logging alone
    parsed = (config.namespaces, config.metrics_port, config.health_port)
    assert parsed == ((("team-a", "team-b"), 9090, 9091) if values else ((), 8080, 8081))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": config.metrics_port, "health": config.health_port}


def test_pod_security_settings(cluster: Cluster) -> None:
    spec = pod_spec(render(cluster))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # With a read-only root filesystem the operator still gets a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_rbac_is_least_privilege(cluster: Cluster) -> None:
    rules = all_rules(render(cluster))
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert not [g for g in granted if "*" in g], "wildcards in RBAC rules"
    # `bind` only on the console's two roles, by name (else the operator could bind any role).
    (bind,) = [r for r in rules if "bind" in r["verbs"]]
    assert bind == {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles"],
        "verbs": ["bind"],
        "resourceNames": ["swarm-learning-console", "swarm-learning-console-reviews"],
    }
    expected = set()
    for kind in ("swarmnetworks", "learningnodes", "swarmtasks"):
        expected |= {("swarmlearning.dev", kind, v) for v in ("get", "list", "watch", "patch", "update")}
        expected |= {("swarmlearning.dev", f"{kind}/status", v) for v in ("get", "patch", "update")}
        expected |= {("swarmlearning.dev", f"{kind}/finalizers", "update")}
    expected |= {("", "pods", v) for v in ("get", "list", "watch", "create", "delete", "patch")}
    expected |= {("", "pods/status", "get")}
    for resource in ("services", "secrets", "configmaps", "persistentvolumeclaims"):
        expected |= {
            ("", resource, v) for v in ("get", "list", "watch", "create", "patch", "update", "delete")
        }
    expected |= {("", "events", "create"), ("", "events", "patch")}
    expected |= {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")}
    expected |= {("", "namespaces", "list"), ("", "namespaces", "watch")}
    # The consoles (spec.rest.enabled): Deployment, ServiceAccount, its RoleBinding and ClusterRoleBinding.
    expected |= {("apps", "deployments", v) for v in ("get", "list", "watch", "create", "patch", "delete")}
    expected |= {("", "serviceaccounts", v) for v in ("get", "list", "create", "delete")}
    rbac = "rbac.authorization.k8s.io"
    expected |= {(rbac, "rolebindings", v) for v in ("get", "list", "create", "delete")}
    expected |= {(rbac, "clusterrolebindings", v) for v in ("get", "list", "create", "patch", "delete")}
    expected |= {(rbac, "clusterroles", "bind")}
    assert granted == expected, (
        f"missing: {sorted(expected - granted)}; not needed: {sorted(granted - expected)}"
    )


def test_service_monitor_only_when_enabled(cluster: Cluster) -> None:
    assert not [o for o in render(cluster) if o["kind"] == "ServiceMonitor"]
    objs = render(cluster, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=prometheus")
    monitor = one(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service_labels = one(objs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()


def test_gpu_node_placement_values(cluster: Cluster) -> None:
    """The operator can be pinned next to GPU pools (tainted nodes): nodeSelector, tolerations, affinity."""
    objs = render(
        cluster,
        "nodeSelector.nvidia\\.com/gpu\\.present=true",
        "tolerations[0].key=nvidia.com/gpu",
        "tolerations[0].operator=Exists",
        "tolerations[0].effect=NoSchedule",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].key=accelerator",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchExpressions[0].operator=Exists",
        "images.ml.repository=registry.local/ml-gpu",
        "images.ml.tag=cuda-2",
        "resources.limits.memory=1Gi",
        "podLabels.gpu-pool=1",
    )
    spec = pod_spec(objs)
    # Values given with --set stay strings (the API server rejects booleans and numbers here).
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]["gpu-pool"] == "1"
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [{"matchExpressions": [{"key": "accelerator", "operator": "Exists"}]}]
    (container,) = spec["containers"]
    assert {"name": "SWARM_ML_IMAGE", "value": "registry.local/ml-gpu:cuda-2"} in container["env"]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    # Defaults leave placement empty.
    default = pod_spec(render(cluster))
    assert "nodeSelector" not in default and "tolerations" not in default and "affinity" not in default


def test_watch_namespaces_render_roles(cluster: Cluster) -> None:
    objs = render(cluster, "watchNamespaces={team-a,team-b}")
    (container,) = pod_spec(objs)["containers"]
    assert "--namespace=team-a" in container["args"] and "--namespace=team-b" in container["args"]
    assert "--all-namespaces" not in container["args"]
    roles = [o for o in objs if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(o["metadata"]["namespace"] for o in objs if o["kind"] == "RoleBinding") == [
        "team-a",
        "team-b",
    ]
    # The only cluster-wide grants left are what Kopf needs to scan (CRDs, namespaces) and the consoles'
    # ClusterRoleBindings (TokenReview and SubjectAccessReview are cluster-scoped).
    (cluster_role,) = [
        o for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] not in CONSOLE_ROLES
    ]
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
        "clusterrolebindings",
        "clusterroles",
    }


def test_console_roles_grant_exactly_the_documented_rights(cluster: Cluster) -> None:
    objs = render(cluster)
    role = {n: grants(one(objs, "ClusterRole", n)) for n in CONSOLE_ROLES}
    sl = "swarmlearning.dev"
    assert role["swarm-learning-console-reviews"] == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    assert role["swarm-learning-console"] == {
        (sl, kind, v)
        for kind in ("swarmnetworks", "learningnodes", "swarmtasks")
        for v in ("get", "list", "watch")
    }
    assert role["swarm-learning-console-viewer"] == {(sl, "swarmnetworks", "get")}
    assert role["swarm-learning-model-reader"] == {
        (sl, "swarmnetworks", "get"),
        (sl, "swarmtasks/model", "get"),
    }
    # A second release in the same cluster leaves the fixed-name roles to the first.
    names = {
        o["metadata"]["name"]
        for o in render(cluster, "rbac.consoleRoles=false")
        if o["kind"] == "ClusterRole"
    }
    assert not names & set(CONSOLE_ROLES) and len(names) == 2


def test_console_image_values(cluster: Cluster) -> None:
    (container,) = pod_spec(
        render(
            cluster, "images.console.repository=registry.local/console", "images.console.pullPolicy=Always"
        )
    )["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SWARM_CONSOLE_IMAGE"] == "registry.local/console:0.1.0"
    assert env["SWARM_CONSOLE_IMAGE_PULL_POLICY"] == "Always"


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("replicas=2", "replicas"),
        ("logLevel=warning", "logLevel"),
        ("metrics.port=70000", "metrics/port"),
        ("images.operator.pullPolicy=Sometimes", "images/operator/pullPolicy"),
        ("images.console.pullPolicy=Sometimes", "images/console/pullPolicy"),
        ("watchNamespaces={Team_A}", "watchNamespaces"),
        ("slMetrics.podMonitor.interval=30", "slMetrics/podMonitor/interval"),
        ("grafanaDashboard.labelValue=not ok", "grafanaDashboard/labelValue"),
    ],
)
def test_bad_values_are_rejected_naming_the_value(cluster: Cluster, value: str, named: str) -> None:
    result = cluster.helm(
        "template", "rel", str(CHART), "--kube-version", KUBE_VERSION, "--set", value, check=False
    )
    assert result.returncode != 0, f"helm template accepted --set {value}"
    assert named in result.stderr, result.stderr


def test_chart_refuses_old_kubernetes(cluster: Cluster) -> None:
    result = cluster.helm("template", "rel", str(CHART), "--kube-version", "1.28.0", check=False)
    assert result.returncode != 0 and ">=1.29.0-0" in result.stderr


# --- real installs -------------------------------------------------------------------------------


def can_i(cluster: Cluster, service_account: str, verb: str, resource: str, namespace: str) -> bool:
    """`kubectl auth can-i` as the ServiceAccount; `resource` may name a subresource: `pods/exec`."""
    resource, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    result = cluster.kubectl(
        "auth", "can-i", verb, resource, *extra, "-n", namespace, f"--as={service_account}", check=False
    )
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def wait_for_pod(cluster: Cluster, namespace: str, release: str) -> dict[str, Any]:
    deadline = time.monotonic() + POD_TIMEOUT
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    while True:
        pods = json.loads(
            cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
        )
        if pods["items"]:
            pod: dict[str, Any] = pods["items"][0]
            return pod
        if time.monotonic() > deadline:
            events = cluster.kubectl("get", "events", "-n", namespace, check=False).stdout
            pytest.fail(f"no operator pod ({selector}) created within {POD_TIMEOUT:.0f} s; events:\n{events}")
        time.sleep(0.5)


def test_install_and_uninstall(cluster: Cluster, crds: tuple[str, ...], namespace: str) -> None:
    release = f"op-{namespace[-6:]}"  # cluster-scoped RBAC names carry the release name: keep it unique
    fullname = f"{release}-swarm-learning"
    service_account = f"system:serviceaccount:{namespace}:{fullname}"
    # The session already installed the CRDs (kubectl, server-side): helm must not touch them.
    cluster.helm("install", release, str(CHART), "-n", namespace, "--skip-crds", "--timeout", "120s")
    try:
        status = json.loads(cluster.helm("status", release, "-n", namespace, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"

        deployment = json.loads(
            cluster.kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json").stdout
        )
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == fullname
        cluster.kubectl("get", "serviceaccount", fullname, "-n", namespace)
        cluster.kubectl("get", "service", f"{fullname}-metrics", "-n", namespace)
        for name in (fullname, f"{fullname}-cluster"):
            cluster.kubectl("get", "clusterrole", name)
            binding = json.loads(cluster.kubectl("get", "clusterrolebinding", name, "-o", "json").stdout)
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": fullname, "namespace": namespace}
            ]

        pod = wait_for_pod(cluster, namespace, release)
        assert pod["spec"]["serviceAccountName"] == fullname
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

        # What the operator may do, as the API server's authorizer sees it (all namespaces).
        assert can_i(cluster, service_account, "patch", "swarmtasks.swarmlearning.dev/status", "default")
        assert can_i(cluster, service_account, "watch", "learningnodes.swarmlearning.dev", "kube-system")
        assert can_i(cluster, service_account, "create", "pods", namespace)
        assert can_i(cluster, service_account, "get", "pods/status", namespace)
        assert can_i(cluster, service_account, "delete", "persistentvolumeclaims", namespace)
        assert can_i(
            cluster, service_account, "list", "customresourcedefinitions.apiextensions.k8s.io", "default"
        )
        # ... and what it may not.
        assert not can_i(cluster, service_account, "delete", "swarmtasks.swarmlearning.dev", namespace)
        assert not can_i(cluster, service_account, "update", "pods/status", namespace)
        assert not can_i(
            cluster, service_account, "create", "customresourcedefinitions.apiextensions.k8s.io", ""
        )
        assert not can_i(cluster, service_account, "create", "pods/exec", namespace)
        assert not can_i(cluster, service_account, "create", "leases.coordination.k8s.io", namespace)
        assert not can_i(cluster, service_account, "delete", "nodes", "")
        # The consoles' bindings: only to the console roles.
        assert can_i(cluster, service_account, "create", "clusterrolebindings.rbac.authorization.k8s.io", "")
        assert can_i(cluster, service_account, "create", "deployments.apps", namespace)
        for role, allowed in (("swarm-learning-console-reviews", True), ("cluster-admin", False)):
            result = cluster.kubectl(
                "auth",
                "can-i",
                "bind",
                f"clusterroles.rbac.authorization.k8s.io/{role}",
                f"--as={service_account}",
                check=False,
            )
            assert result.stdout.strip() == ("yes" if allowed else "no"), (role, result.stdout, result.stderr)
    finally:
        cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "60s", check=False)
    assert not cluster.kubectl(
        "get", "clusterrole", fullname, "--ignore-not-found", "-o", "name"
    ).stdout.strip()
    assert not cluster.kubectl(
        "get", "clusterrole", *CONSOLE_ROLES, "--ignore-not-found", "-o", "name"
    ).stdout.strip()
    assert not cluster.kubectl(
        "get", "deployment", fullname, "-n", namespace, "--ignore-not-found"
    ).stdout.strip()


def test_install_watching_one_namespace(cluster: Cluster, crds: tuple[str, ...], namespace: str) -> None:
    watched = f"{namespace[:50]}-w"
    release = f"ns-{namespace[-6:]}"
    fullname = f"{release}-swarm-learning"
    service_account = f"system:serviceaccount:{namespace}:{fullname}"
    cluster.kubectl("create", "namespace", watched)
    try:
        cluster.helm(
            "install",
            release,
            str(CHART),
            "-n",
            namespace,
            "--skip-crds",
            "--set",
            f"watchNamespaces={{{watched}}}",
        )
        try:
            cluster.kubectl("get", "role", fullname, "-n", watched)
            args = json.loads(
                cluster.kubectl("get", "deployment", fullname, "-n", namespace, "-o", "json").stdout
            )["spec"]["template"]["spec"]["containers"][0]["args"]
            assert f"--namespace={watched}" in args
            assert can_i(cluster, service_account, "create", "pods", watched)
            assert can_i(cluster, service_account, "patch", "swarmnetworks.swarmlearning.dev/status", watched)
            assert not can_i(cluster, service_account, "create", "pods", namespace)
            assert not can_i(cluster, service_account, "get", "secrets", "default")
        finally:
            cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "60s", check=False)
    finally:
        cluster.kubectl("delete", "namespace", watched, "--wait=false", "--ignore-not-found", check=False)


def test_install_with_existing_crds_keeps_them(
    cluster: Cluster, crds: tuple[str, ...], namespace: str
) -> None:
    """Without --skip-crds helm skips CRDs that exist, and uninstall never deletes CRDs (or their CRs)."""
    release = f"crd-{namespace[-6:]}"
    before = {
        name: json.loads(cluster.kubectl("get", "crd", name, "-o", "json").stdout)["metadata"]["uid"]
        for name in CRD_NAMES
    }
    try:
        cluster.helm("install", release, str(CHART), "-n", namespace)
    finally:
        cluster.helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "60s", check=False)
    after = {
        name: json.loads(cluster.kubectl("get", "crd", name, "-o", "json").stdout)["metadata"]["uid"]
        for name in CRD_NAMES
    }
    assert after == before, "helm replaced or removed the CRDs"


def test_sl_pod_monitor_selects_the_operators_task_pods(cluster: Cluster) -> None:
    """The PodMonitor renders only when enabled, selects the SL task pods by the labels the operator
    really puts on them (built here by swarm_operator.builders.task) and scrapes their `metrics` port."""
    from swarm_operator.builders import task as tb

    from tests.unit.test_builders import TASK, _containers, _peer, _task

    assert not [o for o in render(cluster) if o["kind"] == "PodMonitor"]
    objs = render(
        cluster,
        "slMetrics.podMonitor.enabled=true",
        "slMetrics.podMonitor.labels.release=prometheus",
        "slMetrics.podMonitor.interval=15s",
    )
    monitor = one(objs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "swarm-system"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}  # the operator watches every namespace
    pod = tb.task_pod(TASK, _task(), _peer(), 0, ["net-sn.ns1.svc:30304"])
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # Not the operator's own pod.
    operator_labels = pod_spec_labels(objs)
    assert not spec["selector"]["matchLabels"].items() <= operator_labels.items()
    (endpoint,) = spec["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("metrics", "/metrics", "15s")
    sl, _ = _containers(pod)
    ports = {p["name"]: p["containerPort"] for p in sl["ports"]}
    assert ports["metrics"] == int(
        {e["name"]: e["value"] for e in sl["env"] if "value" in e}["SWARM_SL_METRICS_PORT"]
    )
    assert set(spec["podTargetLabels"]) <= set(pod["metadata"]["labels"])
    # Watching some namespaces: the PodMonitor looks for task pods there only.
    scoped = one(
        render(cluster, "slMetrics.podMonitor.enabled=true", "watchNamespaces={team-a,team-b}"), "PodMonitor"
    )
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def pod_spec_labels(objs: list[Any]) -> dict[str, str]:
    labels: dict[str, str] = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_grafana_dashboard_config_map_carries_the_dashboard(cluster: Cluster) -> None:
    assert not [o for o in render(cluster) if o["kind"] == "ConfigMap"]
    dashboard_file = CHART / "dashboards" / "swarm-training.json"
    objs = render(cluster, "grafanaDashboard.enabled=true")
    cm = one(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "swarm-system"
    (key,) = cm["data"]
    dashboard = json.loads(cm["data"][key])
    assert key == "swarm-training.json"
    assert dashboard == json.loads(dashboard_file.read_text())
    assert dashboard["uid"] and len(dashboard["panels"]) >= 9
    custom = one(
        render(
            cluster,
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.label=dashboards.example/grafana",
            "grafanaDashboard.labelValue=swarm",
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.annotations.grafana_folder=Swarm Learning",
        ),
        "ConfigMap",
    )
    assert custom["metadata"]["labels"]["dashboards.example/grafana"] == "swarm"
    assert "grafana_dashboard" not in custom["metadata"]["labels"]
    assert custom["metadata"]["namespace"] == "monitoring"
    assert custom["metadata"]["annotations"] == {"grafana_folder": "Swarm Learning"}
