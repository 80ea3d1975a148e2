"""Offline checks of the CRD files, their chart copies, docs/api.md and the Kubernetes examples.

The API server checks the same files for real in tests/cluster/test_crds.py; these tests catch drift
(chart copy, field contract, missing descriptions) without a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CHART_CRD_DIR = ROOT / "charts" / "swarm-learning" / "crds"
API_DOC = ROOT / "docs" / "api.md"
EXAMPLES = ROOT / "examples" / "k8s"

GROUP = "swarmlearning.dev"
KINDS = {
    "SwarmNetwork": ("swarmnetworks.yaml", "swn"),
    "LearningNode": ("learningnodes.yaml", "ln"),
    "SwarmTask": ("swarmtasks.yaml", "swt"),
}
# Status sub-field Kopf writes; the only place where unknown fields are kept.
KOPF_STATUS_PATH = "status.kopf"


def load_crd(kind: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((CRD_DIR / KINDS[kind][0]).read_text())
    return crd


def version(crd: dict[str, Any]) -> dict[str, Any]:
    (v,) = crd["spec"]["versions"]
    assert isinstance(v, dict)
    return v


def root_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = version(load_crd(kind))["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (dotted path, schema) of every property, array item and map value below `schema`."""
    for name, sub in schema.get("properties", {}).items():
        sub_path = f"{path}.{name}" if path else name
        yield sub_path, sub
        yield from walk(sub, sub_path)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def field(kind: str, dotted: str) -> dict[str, Any]:
    """Schema of `spec.a.b` (dotted path from the object root); fails naming the missing part."""
    node = root_schema(kind)
    for part in dotted.split("."):
        props = node.get("properties", {})
        assert part in props, f"{kind}: {dotted} is in docs/api.md but the CRD has no field {part!r}"
        node = props[part]
    return node


def parent_required(kind: str, dotted: str) -> list[str]:
    parent, _, _ = dotted.rpartition(".")
    required: list[str] = field(kind, parent).get("required", [])
    return required


# --- chart copies --------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_copies() -> None:
    sources = sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    copies = sorted(p.name for p in CHART_CRD_DIR.glob("*.yaml"))
    assert sources == sorted(f for f, _ in KINDS.values())
    assert copies == sources, (
        f"charts/swarm-learning/crds/ holds {copies}, crds/ holds {sources}: run `make sync-crds`"
    )
    differing = [n for n in sources if (CRD_DIR / n).read_bytes() != (CHART_CRD_DIR / n).read_bytes()]
    assert not differing, (
        f"charts/swarm-learning/crds/ differs from crds/ (the one source) in {differing}: "
        "run `make sync-crds`"
    )


# --- CRD structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_names_scope_and_version(kind: str) -> None:
    crd = load_crd(kind)
    file_name, short = KINDS[kind]
    plural = file_name.removesuffix(".yaml")
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert spec["names"]["plural"] == plural
    assert spec["names"]["shortNames"] == [short]
    assert spec["names"]["categories"] == ["swarm"]
    v = version(crd)
    assert (v["name"], v["served"], v["storage"]) == ("v1alpha1", True, True)
    assert v["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_has_a_description(kind: str) -> None:
    schema = root_schema(kind)
    assert schema.get("description")
    missing = [
        path
        for path, sub in walk(schema)
        if not path.startswith("metadata")
        and "{}" not in path
        and not sub.get("description")
        # array items of plain strings are described by their array
        and not (path.endswith("[]") and sub.get("type") == "string")
    ]
    assert not missing, f"{kind}: fields without a description: {missing}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_closed_except_kopf_status(kind: str) -> None:
    open_paths = [p for p, sub in walk(root_schema(kind)) if sub.get("x-kubernetes-preserve-unknown-fields")]
    assert open_paths == [KOPF_STATUS_PATH]
    untyped = [
        p
        for p, sub in walk(root_schema(kind))
        if "type" not in sub and not sub.get("x-kubernetes-int-or-string")
    ]
    assert not untyped, f"{kind}: fields without a type (not structural): {untyped}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_status_allows_what_the_operator_writes(kind: str) -> None:
    status = field(kind, "status")["properties"]
    assert {"phase", "observedGeneration", "conditions", "kopf"} <= set(status)
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


def all_rules(kind: str) -> list[tuple[str, dict[str, Any]]]:
    schema = root_schema(kind)
    found = [("", r) for r in schema.get("x-kubernetes-validations", [])]
    for path, sub in walk(schema):
        found += [(path, r) for r in sub.get("x-kubernetes-validations", [])]
    return found


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_cel_rule_has_a_message_naming_a_field(kind: str) -> None:
    rules = all_rules(kind)
    assert rules
    for path, rule in rules:
        message = rule.get("message", "")
        assert re.search(r"\b(spec|metadata)\.[A-Za-z]", message), (
            f"{kind}: rule {rule['rule']!r} at {path or '<root>'} needs a message naming the field"
        )


def test_cross_field_and_immutability_rules_are_present() -> None:
    def rules_at(kind: str, path: str) -> list[str]:
        return [r["rule"] for p, r in all_rules(kind) if p == path]

    assert "self == oldSelf" in rules_at("LearningNode", "spec.network")
    assert "self == oldSelf" in rules_at("SwarmTask", "spec.network")
    assert "self == oldSelf" in rules_at("SwarmNetwork", "spec.join")
    assert any("self.peers >= self.sync.minPeers" in r for r in rules_at("SwarmTask", "spec"))
    assert any("maxPeers == 0" in r for r in rules_at("SwarmTask", "spec.sync"))
    data_rules = rules_at("LearningNode", "spec.data")
    assert any("claimName" in r and "hostPath" in r and "emptyDir" in r for r in data_rules)


# --- docs/api.md is true to the CRDs -------------------------------------------------------------

SECTION = re.compile(r"^## (SwarmNetwork|LearningNode|SwarmTask)\b")
ROW = re.compile(
    r"^\|\s*(?P<fields>`[^|]+)\|\s*(?P<type>[^|]*)\|\s*(?P<default>[^|]*)\|\s*(?P<rules>[^|]*)\|$"
)
# Defaults the operator fills in at run time: the CRD must not set them.
RUNTIME_DEFAULTS = {"namespace", "task name", "`<name>-ca`", "LearningNode `mlImage`", "unset", ""}


def doc_rows() -> list[tuple[str, list[str], str, str, str]]:
    """(kind, fields, type, default, rules) of every field row of docs/api.md."""
    rows = []
    kind = ""
    for line in API_DOC.read_text().splitlines():
        if line.startswith("## "):
            kind = m.group(1) if (m := SECTION.match(line)) else ""
        elif kind and (m := ROW.match(line.strip())):
            fields = re.findall(r"`([a-zA-Z0-9.]+)`", m.group("fields"))
            rows.append((kind, fields, m["type"].strip(), m["default"].strip(), m["rules"].strip()))
    return rows


def test_docs_list_every_kind() -> None:
    kinds = {kind for kind, *_ in doc_rows()}
    assert kinds == set(KINDS)
    assert len(doc_rows()) > 50


def parse_literal(text: str) -> Any:
    text = text.strip("`")
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    if text in ("{}", "[]"):
        return {} if text == "{}" else []
    return text


@pytest.mark.parametrize(
    ("kind", "fields", "type_", "default", "rules"),
    [r for r in doc_rows() if r[1] and r[1][0] != "status"],
    ids=lambda v: v if isinstance(v, str) and v.startswith("spec") else None,
)
def test_doc_row_matches_crd(kind: str, fields: list[str], type_: str, default: str, rules: str) -> None:
    for dotted in fields:
        schema = field(kind, dotted)  # exists
        if len(fields) > 1:
            continue
        name = dotted.rpartition(".")[2]
        if default == "required":
            assert name in parent_required(kind, dotted), f"{kind}: {dotted} should be required"
            assert "default" not in schema
        elif default in RUNTIME_DEFAULTS:
            assert "default" not in schema, f"{kind}: {dotted} has a CRD default; docs say {default!r}"
        elif default.startswith("{}") or default == "[]":
            empty = parse_literal(default.split()[0])
            assert schema.get("default", empty) == empty, f"{kind}: {dotted} default"
        else:
            assert schema.get("default") == parse_literal(default), f"{kind}: {dotted} default"
        if m := re.match(r"(-?\d+(?:\.\d+)?)–(-?\d+(?:\.\d+)?)", rules):
            assert (schema.get("minimum"), schema.get("maximum")) == (
                parse_literal(m[1]),
                parse_literal(m[2]),
            ), f"{kind}: {dotted} range"
        elif m := re.match(r"≥\s*(\d+)", rules):
            assert schema.get("minimum") == int(m[1]), f"{kind}: {dotted} minimum"
        if type_ == "enum" and rules:
            values = re.split(r",\s*", re.split(r"\s*[(;]", rules)[0])
            assert schema["enum"] == values, f"{kind}: {dotted} enum"
        elif type_ == "enum":
            assert "enum" in schema


def doc_status_fields(kind: str) -> list[str]:
    text = API_DOC.read_text()
    section = text.split(f"## {kind}", 1)[1].split("\n## ", 1)[0]
    (line,) = [ln for ln in section.splitlines() if ln.startswith("| status |")]
    return re.findall(r"`([a-zA-Z]+)`", line)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_doc_status_fields_are_in_the_status_schema(kind: str) -> None:
    fields = doc_status_fields(kind)
    assert "phase" in fields
    status = field(kind, "status")["properties"]
    missing = [f for f in fields if f not in status]
    assert not missing, f"{kind}: status fields in docs/api.md but not in the CRD: {missing}"


def test_printer_columns_match_docs() -> None:
    text = " ".join(API_DOC.read_text().split("Printer columns:", 1)[1].split("\n\n")[0].split())
    for kind in KINDS:
        m = re.search(rf"{kind}: ([A-Za-z, ]+)\.", text)
        assert m, f"docs/api.md lists no printer columns for {kind}"
        wanted = [c.strip() for c in m[1].split(",")]
        got = [c["name"] for c in version(load_crd(kind))["additionalPrinterColumns"]]
        assert got == wanted, f"{kind} printer columns"


# --- examples ------------------------------------------------------------------------------------


def example_docs() -> list[tuple[str, dict[str, Any]]]:
    """The examples' swarm resources (examples also carry core objects, e.g. the sites' data PVCs)."""
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [
            (path.name, d)
            for d in yaml.safe_load_all(path.read_text())
            if d and str(d.get("apiVersion", "")).startswith(f"{GROUP}/")
        ]
    return docs


def test_example_core_objects_are_valid_kubernetes() -> None:
    import kubernetes_validate

    core = [
        (path.name, d)
        for path in sorted(EXAMPLES.glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d and not str(d.get("apiVersion", "")).startswith(f"{GROUP}/")
    ]
    assert core, "the minimal example carries its sites' data PVCs"
    for _, doc in core:
        kubernetes_validate.validate(doc, "1.34", strict=True)  # raises naming the bad field


def test_examples_cover_the_brief() -> None:
    kinds = [d["kind"] for _, d in example_docs()]
    assert kinds.count("SwarmNetwork") >= 2
    assert kinds.count("LearningNode") >= 4
    assert kinds.count("SwarmTask") >= 2
    specs = [d["spec"] for _, d in example_docs()]
    assert any(s.get("join", {}).get("endpoints") for s in specs)
    assert any(s.get("gpus", 0) > 0 for s in specs)
    assert any(s.get("prerequisites") and s["sync"].get("mergeMethod") == "krum" for s in specs)


def unknown_keys(value: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            if key not in schema["properties"]:
                yield f"{path}.{key}"
            else:
                yield from unknown_keys(sub, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            yield from unknown_keys(item, schema["items"], f"{path}[{i}]")


@pytest.mark.parametrize(("name", "doc"), example_docs(), ids=lambda v: v if isinstance(v, str) else None)
def test_example_uses_only_crd_fields(name: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == f"{GROUP}/v1alpha1", name
    assert doc["kind"] in KINDS, name
    schema = root_schema(doc["kind"])
    bad = list(unknown_keys(doc["spec"], schema["properties"]["spec"], "spec"))
    assert not bad, f"{name}: {doc['metadata']['name']} uses fields the CRD does not have: {bad}"
