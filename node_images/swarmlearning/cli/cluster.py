"""`swarmctl` cluster commands (the SWCI role on Kubernetes): views of SwarmNetworks, LearningNodes and
SwarmTasks, waiting for a task, its round progress, and fetching its merged model.

This is the one module of `swarmlearning` that talks to the Kubernetes API (the official `kubernetes`
client; raw JSON in and out). It never imports the operator or Kopf.

Commands::

    swarmctl get networks|nodes|tasks [-n NS | -A] [-o table|json]
    swarmctl wait task NAME [--for Succeeded] [--timeout 600] [-n NS]
    swarmctl task progress NAME [-n NS] [--endpoints H:P,... --cert-dir DIR]
    swarmctl model fetch TASK -o FILE [-n NS] [--node LEARNINGNODE] [--file model.safetensors]

`model fetch`: each peer's ML container writes the final merged model to the task's
`spec.modelOutput.path`, which the operator mounts from the site's data volume (sub-path
`swarm-output/<task>`). The task's `status.modelLocation` names it as `pvc://<claim>/<path>` or
`hostpath://<node>/<path>`. Once the task's pods have ended nothing runs that could serve the file, so
`fetch` starts a short-lived helper pod mounting that volume read-only (on that node for hostPath),
streams the file out through the exec API (`cat`, binary, no size limit, nothing buffered in memory
or in a Secret/ConfigMap) and deletes the pod. Sites with `data.emptyDir` keep no model: their
volume is gone with the pod.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

GROUP, VERSION = "swarmlearning.dev", "v1alpha1"
PLURALS = {"networks": "swarmnetworks", "nodes": "learningnodes", "tasks": "swarmtasks"}
TERMINAL = ("Succeeded", "Failed")
HELPER_UID = 65532
POLL_SECONDS = 1.0


class ClusterError(Exception):
    """A problem the user can act on; printed without a traceback (exit code 2)."""


# ------------------------------------------------------------------------------------ API access


class Api:
    """Minimal raw-JSON access to the API server (kubeconfig or in-cluster service account)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        import kubernetes

        self._k = kubernetes
        config = kubernetes.client.Configuration()
        try:
            if (
                kubeconfig is None
                and os.environ.get("KUBERNETES_SERVICE_HOST")
                and not os.environ.get("KUBECONFIG")
            ):
                kubernetes.config.load_incluster_config(client_configuration=config)
            else:
                kubernetes.config.load_kube_config(
                    config_file=kubeconfig, context=context, client_configuration=config
                )
        except (kubernetes.config.ConfigException, OSError) as e:
            raise ClusterError(f"no usable Kubernetes configuration (--kubeconfig / $KUBECONFIG): {e}") from e
        self.client = kubernetes.client.ApiClient(config)
        self.default_namespace = "default"
        try:
            _, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
            self.default_namespace = (active or {}).get("context", {}).get("namespace") or "default"
        except (kubernetes.config.ConfigException, OSError, TypeError):
            pass

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        req = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.client.call_api(*req, _request_timeout=(5.0, 30.0))
            resp.read()
        except (self._k.client.exceptions.ApiException, OSError) as e:
            raise ClusterError(f"{method} {path}: {e}") from e
        data: dict[str, Any] = json.loads(resp.data) if resp.data else {}
        if resp.status == 404:
            raise NotFoundError(str(data.get("message") or path))
        if not 200 <= resp.status <= 299:
            raise ClusterError(f"{method} {path}: HTTP {resp.status} {data.get('message') or ''}".strip())
        return data

    def custom(self, plural: str, namespace: str | None, name: str | None = None) -> dict[str, Any]:
        base = f"/apis/{GROUP}/{VERSION}"
        path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        return self.request("GET", f"{path}/{name}" if name else path)

    def close(self) -> None:
        self.client.close()


class NotFoundError(ClusterError):
    pass


class WaitFailed(ClusterError):
    """A wait ended without the wanted phase (timeout, or another final phase): exit code 1."""


# ------------------------------------------------------------------------------------- tables


def _age(ts: str | None, now: dt.datetime | None = None) -> str:
    if not ts:
        return "-"
    then = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    s = int(((now or dt.datetime.now(dt.UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{max(s, 0)}s"


def _reason(status: Mapping[str, Any]) -> str:
    """The most telling condition: the first False one's reason, else the phase."""
    for c in status.get("conditions") or ():
        if c.get("status") == "False" and c.get("type") not in ("Running", "LedgerReachable", "LedgerAccess"):
            return f"{c.get('reason')}: {c.get('message', '')}"
    for c in status.get("conditions") or ():
        if c.get("type") == "Failed" and c.get("status") == "True":
            return f"{c.get('reason')}: {c.get('message', '')}"
    return ""


def rows(kind: str, items: Sequence[Mapping[str, Any]], all_namespaces: bool = False) -> list[list[str]]:
    """Table rows (header first) for `swarmctl get <kind>`; pure, for tests."""
    if kind == "networks":
        header = ["NAME", "MEMBERS", "READY", "HEIGHT", "PHASE", "ENDPOINT", "AGE", "MESSAGE"]
    elif kind == "nodes":
        header = ["NAME", "NETWORK", "PHASE", "TASK", "ENDPOINT", "AGE", "MESSAGE"]
    else:
        header = ["NAME", "NETWORK", "PHASE", "PEERS", "DONE", "ROUND", "MERGE", "AGE", "MESSAGE"]
    out = [(["NAMESPACE"] if all_namespaces else []) + header]
    for obj in sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])):
        meta, spec, st = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        age = _age(meta.get("creationTimestamp"))
        if kind == "networks":
            endpoints = st.get("endpoints") or ["-"]
            row = [
                meta["name"],
                str(spec.get("members", 1)),
                str(st.get("membersReady", 0)),
                str(st.get("ledgerHeight", "-")),
                st.get("phase", "-"),
                endpoints[0],
                age,
            ]
        elif kind == "nodes":
            row = [
                meta["name"],
                spec.get("network", "-"),
                st.get("phase", "-"),
                st.get("currentTask") or "-",
                st.get("endpoint", "-"),
                age,
            ]
        else:
            nodes = st.get("nodes") or []
            done = sum(1 for n in nodes if n.get("phase") == "Succeeded")
            row = [
                meta["name"],
                spec.get("network", "-"),
                st.get("phase", "-"),
                str(spec.get("peers", "-")),
                f"{done}/{spec.get('peers', '-')}",
                str(st.get("round", "-")),
                (spec.get("sync") or {}).get("mergeMethod", "mean"),
                age,
            ]
        out.append(([meta.get("namespace", "")] if all_namespaces else []) + row + [_reason(st)])
    return out


def render(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


# ----------------------------------------------------------------------------------- commands


def _api(args: argparse.Namespace) -> Api:
    return Api(args.kubeconfig, args.context)


def _ns(args: argparse.Namespace, api: Api) -> str:
    return str(args.namespace or api.default_namespace)


def cmd_get(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        ns = None if args.all_namespaces else _ns(args, api)
        items = api.custom(PLURALS[args.kind], ns).get("items", [])
    finally:
        api.close()
    if args.output == "json":
        print(json.dumps(items, indent=2))
    elif not items:
        print(f"No {args.kind} found" + (f" in namespace {ns}." if ns else "."))
    else:
        print(render(rows(args.kind, items, all_namespaces=ns is None)))
    return 0


def wait_phase(
    api: Api, namespace: str, name: str, want: str, timeout: float, poll: float = POLL_SECONDS
) -> dict[str, Any]:
    """Poll the task until its phase is `want`; raises ClusterError on timeout or on a terminal other
    phase (a Failed task will not become Succeeded)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while True:
        try:
            last = api.custom("swarmtasks", namespace, name).get("status") or {}
        except NotFoundError as e:
            raise ClusterError(f"SwarmTask {name} not found in namespace {namespace}") from e
        phase = last.get("phase")
        if phase == want:
            return last
        if phase in TERMINAL and want in TERMINAL:
            raise WaitFailed(
                f"SwarmTask {name} ended {phase}, not {want}: {_reason(last) or 'no reason given'}"
            )
        if time.monotonic() >= deadline:
            raise WaitFailed(
                f"timed out after {timeout:g}s waiting for SwarmTask {name} to be {want}"
                f" (phase {phase or '-'}{'; ' + _reason(last) if _reason(last) else ''})"
            )
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.01)))


def cmd_wait(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise ClusterError(f"--timeout must be > 0 seconds, got {args.timeout}")
    api = _api(args)
    try:
        st = wait_phase(api, _ns(args, api), args.name, args.phase, args.timeout)
    finally:
        api.close()
    print(f"SwarmTask {args.name} is {st.get('phase')} (round {st.get('round', '-')})")
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def progress_lines(task: Mapping[str, Any]) -> list[str]:
    """Human summary of a task's status (pure, for tests)."""
    spec, st = task.get("spec") or {}, task.get("status") or {}
    lines = [
        f"task {task['metadata']['name']}: phase {st.get('phase', '-')}, round {st.get('round', '-')}"
        + (f" ({spec.get('totalEpochs')} epochs)" if spec.get("totalEpochs") else "")
        + f", merge {(spec.get('sync') or {}).get('mergeMethod', 'mean')}",
    ]
    reason = _reason(st)
    if reason:
        lines.append(f"  {reason}")
    last = st.get("lastRound") or {}
    if last:
        lines.append(
            f"  last round {last.get('round', '-')}: leader {last.get('leader') or '-'},"
            f" participants {', '.join(last.get('participants') or []) or '-'},"
            f" merged {str(last.get('mergedDigest') or '-')[:16]},"
            f" ledger height {st.get('ledgerHeight', '-')}"
        )
    table = [["NODE", "PHASE", "ROUND", "LOSS", "METRIC", "RESTARTS"]]
    for n in st.get("nodes") or ():
        table.append(
            [
                n.get("name", "-"),
                n.get("phase", "-"),
                _fmt(n.get("round")),
                _fmt(n.get("loss")),
                _fmt(n.get("metric")),
                _fmt(n.get("restarts", 0)),
            ]
        )
    if len(table) > 1:
        lines += ["  " + line for line in render(table).splitlines()]
    if st.get("modelLocation"):
        lines.append(f"  model: {st['modelLocation']}")
    return lines


async def _ledger_rounds(endpoints: list[str], cert_dir: str, contract: str, timeout: float) -> list[Any]:
    from swarmlearning import pki
    from swarmlearning.ledger import connected

    async with connected(endpoints, pki.NodeCert.load(cert_dir), timeout=timeout) as ledger:
        return list(await ledger.records(contract))


def cmd_progress(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        ns = _ns(args, api)
        try:
            task = api.custom("swarmtasks", ns, args.name)
        except NotFoundError as e:
            raise ClusterError(f"SwarmTask {args.name} not found in namespace {ns}") from e
        endpoints = args.endpoints
        if not endpoints:
            net = (task.get("spec") or {}).get("network", "")
            try:
                endpoints = (api.custom("swarmnetworks", ns, net).get("status") or {}).get("endpoints") or []
            except NotFoundError:
                endpoints = []
    finally:
        api.close()
    print("\n".join(progress_lines(task)))
    contract = ((task.get("spec") or {}).get("sync") or {}).get("contract") or args.name
    if not args.cert_dir:
        print(
            f"ledger: not read (give --cert-dir with a swarm certificate, and --endpoints when the SN API"
            f" {', '.join(endpoints) or '-'} is not reachable from here, e.g. through kubectl port-forward)"
        )
        return 0
    try:
        records = asyncio.run(
            asyncio.wait_for(
                _ledger_rounds(list(endpoints), args.cert_dir, contract, args.ledger_timeout),
                args.ledger_timeout + 5,
            )
        )
    except Exception as e:  # any ledger failure is reported, the status view above still stands
        print(f"ledger: unreachable at {', '.join(endpoints) or '-'}: {e}")
        return 1
    rounds = [r for r in records if r.kind == "round"]
    print(f"ledger: {len(records)} record(s) of contract {contract}, {len(rounds)} round(s)")
    for r in rounds:
        b = r.body
        print(
            f"  round {b.get('round')}: leader {r.author},"
            f" participants {', '.join(b.get('participants', []))},"
            f" merge {b.get('merge_method', '-')}, rejected {len(b.get('rejected') or {})}, {r.time}"
        )
    return 0


# ---------------------------------------------------------------------------------- model fetch


def parse_location(location: str) -> tuple[str, str, str]:
    """(`pvc`|`hostpath`, claim-or-node, path) from a modelLocation URI; raises ClusterError."""
    scheme, sep, rest = location.partition("://")
    if not sep or scheme not in ("pvc", "hostpath") or "/" not in rest:
        raise ClusterError(
            f"cannot fetch from modelLocation {location!r}: expected pvc://<claim>/<path> or "
            "hostpath://<node>/<path>"
        )
    where, _, path = rest.partition("/")
    return scheme, where, path.strip("/")


def helper_pod(name: str, namespace: str, location: str, image: str) -> dict[str, Any]:
    """The short-lived pod that mounts the model's volume read-only so `fetch` can stream the file."""
    scheme, where, path = parse_location(location)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": 3600,  # a forgotten helper ends on its own
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": HELPER_UID,
            "runAsGroup": HELPER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "fetch",
                "image": image,
                "command": ["sleep", "3600"],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "model", "mountPath": "/model", "readOnly": True}],
            }
        ],
    }
    if scheme == "pvc":
        spec["volumes"] = [{"name": "model", "persistentVolumeClaim": {"claimName": where, "readOnly": True}}]
        spec["containers"][0]["volumeMounts"][0]["subPath"] = path
    else:
        spec["nodeName"] = where  # a hostPath lives on one node
        spec["volumes"] = [{"name": "model", "hostPath": {"path": f"/{path}", "type": "Directory"}}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "swarm-learning",
                "app.kubernetes.io/component": "model-fetch",
            },
        },
        "spec": spec,
    }


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise ClusterError(f"--timeout must be > 0 seconds, got {args.timeout}")
    api = _api(args)
    ns = _ns(args, api)
    try:
        try:
            task = api.custom("swarmtasks", ns, args.task)
        except NotFoundError as e:
            raise ClusterError(f"SwarmTask {args.task} not found in namespace {ns}") from e
        location = (task.get("status") or {}).get("modelLocation")
        if args.node:
            location = _node_location(api, ns, args.task, args.node)
        if not location:
            raise ClusterError(
                f"SwarmTask {args.task} has no status.modelLocation"
                f" (phase {(task.get('status') or {}).get('phase')}):"
                " no peer succeeded yet, or every peer's data is emptyDir, which is gone with its pod"
            )
        image = args.image or _sl_image(api, ns, task)
        pod_name = f"{args.task}-fetch-{os.getpid()}"[:63]
        api.request("POST", f"/api/v1/namespaces/{ns}/pods", body=helper_pod(pod_name, ns, location, image))
        try:
            _wait_running(api, ns, pod_name, args.timeout)
            size = _stream_file(api, ns, pod_name, f"/model/{args.file}", Path(args.output), args.timeout)
        finally:
            try:
                api.request(
                    "DELETE", f"/api/v1/namespaces/{ns}/pods/{pod_name}", body={"gracePeriodSeconds": 0}
                )
            except ClusterError as e:
                print(f"warning: could not delete helper pod {pod_name}: {e}", file=sys.stderr)
    finally:
        api.close()
    print(f"wrote {args.output} ({size} bytes) from {location}/{args.file}")
    return 0


def _node_location(api: Api, ns: str, task: str, node: str) -> str | None:
    ln = api.custom("learningnodes", ns, node)
    data = (ln.get("spec") or {}).get("data") or {}
    if data.get("claimName"):
        return f"pvc://{data['claimName']}/swarm-output/{task}"
    if data.get("hostPath"):
        pods = api.request(
            "GET",
            f"/api/v1/namespaces/{ns}/pods",
            query={"labelSelector": f"{GROUP}/task={task},{GROUP}/learning-node={node}"},
        )
        for p in pods.get("items", []):
            if p["spec"].get("nodeName"):
                return f"hostpath://{p['spec']['nodeName']}{data['hostPath'].rstrip('/')}/swarm-output/{task}"
    return None


def _sl_image(api: Api, ns: str, task: Mapping[str, Any]) -> str:
    """The first peer's SL image: it has a shell and `cat`, and the site can pull it already."""
    for peer in (task.get("status") or {}).get("peers") or ():
        try:
            return str(
                (api.custom("learningnodes", ns, peer).get("spec") or {}).get("slImage")
                or "swarmlearning/sl:0.1.0"
            )
        except NotFoundError:
            continue
    return "swarmlearning/sl:0.1.0"


def _wait_running(api: Api, ns: str, pod: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        phase = (api.request("GET", f"/api/v1/namespaces/{ns}/pods/{pod}").get("status") or {}).get("phase")
        if phase == "Running":
            return
        if phase in ("Failed", "Succeeded"):
            raise ClusterError(f"helper pod {pod} ended ({phase}) before the model could be copied")
        if time.monotonic() > deadline:
            raise ClusterError(
                f"helper pod {pod} not Running after {timeout:g}s (phase {phase}); "
                "is the volume attachable here?"
            )
        time.sleep(POLL_SECONDS)


def _stream_file(api: Api, ns: str, pod: str, path: str, out: Path, timeout: float) -> int:
    """`cat path` in the pod through the exec API, written to `out` as it arrives; returns bytes."""
    from kubernetes import client as kclient
    from kubernetes.stream import stream

    core = kclient.CoreV1Api(api.client)
    ws = stream(
        core.connect_get_namespaced_pod_exec,
        pod,
        ns,
        command=["cat", path],
        stderr=True,
        stdin=False,
        stdout=True,
        tty=False,
        binary=True,
        _preload_content=False,
    )
    size, errors = 0, b""
    tmp = out.with_name(out.name + ".part")
    deadline = time.monotonic() + timeout
    try:
        with open(tmp, "wb") as fh:
            while ws.is_open():
                if time.monotonic() > deadline:
                    raise ClusterError(f"copying {path} from {pod} took longer than {timeout:g}s")
                ws.update(timeout=1)
                chunk = ws.read_stdout()
                if chunk:
                    fh.write(chunk)
                    size += len(chunk)
                errors += ws.read_stderr() or b""
        code = ws.returncode
    finally:
        ws.close()
    if code not in (0, None) or errors:
        tmp.unlink(missing_ok=True)
        raise ClusterError(f"reading {path} in {pod} failed: {errors.decode(errors='replace').strip()}")
    tmp.replace(out)
    return size


# ---------------------------------------------------------------------------------- registration


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", help="kubeconfig context")


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except ClusterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1 if isinstance(e, WaitFailed) else 2

    return run


def register(sub: Any) -> None:
    """Add `get`, `wait`, `task` and `model` to swarmctl's subcommands."""
    g = sub.add_parser("get", help="list SwarmNetworks, LearningNodes or SwarmTasks with their status")
    g.add_argument("kind", choices=sorted(PLURALS), help="what to list")
    _common(g)
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument("-o", "--output", choices=("table", "json"), default="table")
    g.set_defaults(func=_guard(cmd_get))

    w = sub.add_parser("wait", help="wait until a SwarmTask reaches a phase")
    ws = w.add_subparsers(dest="wait_kind", required=True)
    wt = ws.add_parser("task", help="wait for a SwarmTask (exit 1 on timeout or another final phase)")
    wt.add_argument("name")
    wt.add_argument(
        "--for",
        dest="phase",
        default="Succeeded",
        choices=("Pending", "Waiting", "Running", "Succeeded", "Failed"),
    )
    wt.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    _common(wt)
    wt.set_defaults(func=_guard(cmd_wait))

    t = sub.add_parser("task", help="SwarmTask details")
    ts = t.add_subparsers(dest="task_cmd", required=True)
    tp = ts.add_parser("progress", help="per-node rounds, loss and metric; ledger rounds when reachable")
    tp.add_argument("name")
    _common(tp)
    tp.add_argument(
        "--endpoints",
        type=lambda v: [e for e in v.split(",") if e],
        default=None,
        help="SN API endpoints host:port[,...] (default: the network's status.endpoints)",
    )
    tp.add_argument("--cert-dir", help="swarm certificate (tls.crt, tls.key, ca.crt) to read the ledger with")
    tp.add_argument("--ledger-timeout", type=float, default=10.0, help="seconds (default 10)")
    tp.set_defaults(func=_guard(cmd_progress))

    m = sub.add_parser("model", help="the merged model of a SwarmTask")
    ms = m.add_subparsers(dest="model_cmd", required=True)
    mf = ms.add_parser("fetch", help="copy the merged model out of the cluster (see docs/operator.md)")
    mf.add_argument("task")
    mf.add_argument("-o", "--output", required=True, help="local file to write")
    _common(mf)
    mf.add_argument("--node", help="take this LearningNode's copy instead of status.modelLocation")
    mf.add_argument("--file", default="model.safetensors", help="file name in the output directory")
    mf.add_argument("--image", help="helper pod image with `cat` (default: the first peer's SL image)")
    mf.add_argument("--timeout", type=float, default=300.0, help="seconds for the helper pod and the copy")
    mf.set_defaults(func=_guard(cmd_fetch))
