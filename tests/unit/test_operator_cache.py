"""The operator's read path without a cluster: the object cache (keys, versions, label index, slimming),
the coalescing of triggers, the minimal status patch, and the facade reading from the cache."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from swarm_operator import status as st
from swarm_operator.kube import Kube, ObjectCache, newer, slim
from swarm_operator.reconcile.context import Coalescer, Context

pytestmark = pytest.mark.unit


def pod(name: str, rv: str, ns: str = "ns", **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels},
        "status": {"phase": "Pending"},
    }


# ---------------------------------------------------------------------------------------- cache


def test_newer_compares_integer_versions_and_trusts_opaque_ones() -> None:
    assert newer("11", "9") and newer("9", "9") and not newer("9", "11")
    assert newer("abc", "11") and newer("11", None) and newer(None, "11")


def test_observe_keeps_the_newest_version_per_kind_namespace_name() -> None:
    c = ObjectCache(kinds=("Pod", "Service"))
    assert c.observe("Pod", pod("a", "10"))
    assert not c.observe("Pod", pod("a", "9"))  # a late watch event after a write's response
    assert c.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "10"  # type: ignore[index]
    # Same name in another namespace or of another kind is another object.
    assert c.observe("Pod", pod("a", "3", ns="other"))
    assert c.observe("Service", pod("a", "4"))
    assert len(c) == 3
    assert c.get("Pod", "other", "a")["metadata"]["resourceVersion"] == "3"  # type: ignore[index]
    assert c.get("Pod", "ns", "b") is None


def test_find_uses_the_label_index_and_follows_relabels() -> None:
    c = ObjectCache(kinds=("Pod",))
    c.observe("Pod", pod("a", "1", task="t1", node="n1"))
    c.observe("Pod", pod("b", "2", task="t1", node="n2"))
    c.observe("Pod", pod("c", "3", task="t2", node="n1"))
    names = lambda objs: [o["metadata"]["name"] for o in objs]  # noqa: E731
    assert names(c.find("Pod", "ns", {"task": "t1"})) == ["a", "b"]
    assert names(c.find("Pod", "ns", {"task": "t1", "node": "n1"})) == ["a"]
    assert names(c.find("Pod", "ns", {"task": "t3"})) == []
    assert names(c.find("Pod", "ns", {})) == ["a", "b", "c"]
    assert names(c.find("Pod", "elsewhere", {"task": "t1"})) == []
    c.observe("Pod", pod("a", "4", task="t2", node="n1"))  # relabelled: leaves the t1 set
    assert names(c.find("Pod", "ns", {"task": "t1"})) == ["b"]
    assert names(c.find("Pod", "ns", {"task": "t2"})) == ["a", "c"]


def test_forget_drops_only_versions_not_newer_than_the_deleted_one() -> None:
    c = ObjectCache(kinds=("Pod",))
    c.observe("Pod", pod("a", "20", task="t"))
    # A DELETED event of an older incarnation arrives after the name was created again (rv 20).
    assert not c.forget("Pod", "ns", "a", "15")
    assert c.get("Pod", "ns", "a") is not None
    assert c.forget("Pod", "ns", "a", "20")
    assert c.get("Pod", "ns", "a") is None
    assert c.find("Pod", "ns", {"task": "t"}) == [] and c.list("Pod", "ns") == []
    assert not c.forget("Pod", "ns", "a")  # already gone


def test_list_by_namespace_and_everywhere() -> None:
    c = ObjectCache(kinds=("learningnodes",))
    for ns, name in (("b", "x"), ("a", "y"), ("a", "x")):
        c.observe("learningnodes", pod(name, "1", ns=ns))
    assert [o["metadata"]["name"] for o in c.list("learningnodes", "a")] == ["x", "y"]
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in c.list("learningnodes")] == [
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
    ]


def test_slim_drops_managed_fields_and_last_applied_without_touching_the_input() -> None:
    obj: dict[str, Any] = {
        "metadata": {
            "name": "a",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"},
        },
        "spec": {"x": 1},
    }
    out = slim(obj)
    assert "managedFields" not in out["metadata"]
    assert out["metadata"]["annotations"] == {"keep": "me"}
    assert out["spec"] is obj["spec"]  # shared, not copied
    assert "managedFields" in obj["metadata"] and len(obj["metadata"]["annotations"]) == 2


def test_cached_pods_keep_only_where_they_run_of_their_spec() -> None:
    c = ObjectCache(kinds=("Pod", "Service"))
    full = {**pod("a", "1"), "spec": {"nodeName": "kwok-0", "containers": [{"name": "ml", "env": []}]}}
    c.observe("Pod", full)
    c.observe("Service", {**pod("a", "1"), "spec": {"ports": [{"port": 30305}]}})
    assert c.get("Pod", "ns", "a")["spec"] == {"nodeName": "kwok-0"}  # type: ignore[index]
    assert c.get("Service", "ns", "a")["spec"] == {"ports": [{"port": 30305}]}  # type: ignore[index]
    assert "containers" in full["spec"]


class _NoApi:
    """An ApiClient stand-in that fails every request: reads must come from the cache."""

    user_agent = ""

    def param_serialize(self, **_: Any) -> Any:
        raise AssertionError("a read went to the API server although the cache holds the kind")


def test_kube_reads_held_kinds_from_the_cache_only() -> None:
    cache = ObjectCache(kinds=("Pod", "swarmtasks"))
    kube = Kube(_NoApi(), cache)  # type: ignore[arg-type]
    cache.observe("Pod", pod("a", "1", task="t"))
    cache.observe("swarmtasks", {"metadata": {"name": "train", "namespace": "ns", "resourceVersion": "1"}})
    assert kube.get("Pod", "ns", "a") is not None
    assert kube.get("Pod", "ns", "missing") is None  # authoritative: no request
    assert [p["metadata"]["name"] for p in kube.find("Pod", "ns", {"task": "t"})] == ["a"]
    assert kube.get_custom("swarmtasks", "ns", "train") is not None
    assert [t["metadata"]["name"] for t in kube.list_custom("swarmtasks", "ns")] == ["train"]
    with pytest.raises(AssertionError, match="went to the API server"):
        kube.get("Secret", "ns", "x")  # a kind the cache does not hold
    with pytest.raises(AssertionError, match="went to the API server"):
        kube.get("Pod", "ns", "missing", read_through=True)


# ---------------------------------------------------------------------------------- coalescing


def test_coalescer_folds_triggers_during_a_run_into_one_rerun() -> None:
    co = Coalescer()
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def slow() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            started.set()
            assert release.wait(10), "the test never released the first run"

    first = threading.Thread(target=co.run, args=("k", slow))
    first.start()
    assert started.wait(10), "the first run never started"
    # Five triggers while the first run is under way: none runs itself, all fold into one rerun.
    assert [co.run("k", slow) for _ in range(5)] == [False] * 5
    assert co.busy("k") and co.folded == 5
    release.set()
    first.join(10)
    assert not first.is_alive()
    assert runs == [0, 1] and not co.busy("k")
    # Other keys are independent, and an idle key runs at once.
    assert co.run("other", lambda: runs.append(-1)) and runs[-1] == -1


def test_coalescer_releases_the_key_when_the_run_raises() -> None:
    co = Coalescer()

    def boom() -> None:
        raise RuntimeError("reconcile failed")

    with pytest.raises(RuntimeError, match="reconcile failed"):
        co.run("k", boom)
    assert not co.busy("k")
    assert co.run("k", lambda: None)


# ------------------------------------------------------------------------------- status writes


def test_status_patch_sends_only_changed_fields_or_nothing() -> None:
    old = {"phase": "Running", "peers": ["a", "b"], "nodes": [{"name": "a"}], "round": 3}
    assert st.status_patch(old, {"phase": "Running", "peers": ["a", "b"]}) is None
    assert st.status_patch(old, {"phase": "Succeeded", "peers": ["a", "b"], "round": 4}) == {
        "phase": "Succeeded",
        "round": 4,
    }
    assert st.status_patch(old, {"round": None}) == {"round": None}  # merge patch: removes it
    assert st.status_patch(None, {"phase": "Pending"}) == {"phase": "Pending"}
    assert st.status_patch({}, {"currentTask": None}) is None  # absent already


class _Recorder:
    def __init__(self) -> None:
        self.patches: list[tuple[str, str, str, dict[str, Any]]] = []

    def patch_custom_status(self, plural: str, ns: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((plural, ns, name, dict(status)))
        return {}


def test_write_status_is_one_minimal_patch_and_none_when_unchanged() -> None:
    rec = _Recorder()
    ctx = Context(kube=rec)  # type: ignore[arg-type]
    body = {"metadata": {"name": "t", "namespace": "ns"}, "status": {"phase": "Pending", "peers": ["a"]}}
    assert not ctx.write_status("swarmtasks", body, {"phase": "Pending", "peers": ["a"]})
    assert ctx.write_status("swarmtasks", body, {"phase": "Running", "peers": ["a"]})
    assert rec.patches == [("swarmtasks", "ns", "t", {"phase": "Running"})]
