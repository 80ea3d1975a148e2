"""Merge plugins: discovery of entry points from a real (temporary) distribution on sys.path, the
interface a plugin sees, every error named, built-ins not shadowable, the identity in the result, the
contract parameters (``plugin:<name>``, ``mergeFallback``) in the callback, its environment and the
SwarmTask spec, and the leader's fallback decision."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from swarm_operator.specs import SpecError, TaskSpec
from swarmlearning.client.params import SwarmParameterError, env_overrides, validate_params
from swarmlearning.merge import MergeError, merge
from swarmlearning.merge import plugins as mp
from swarmlearning.sl.modes import RoundFailed
from swarmlearning.sl.modes import single as single_mode
from swarmlearning.sl.modes.sharded import may_shard

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "merge-plugin"


def make_distribution(
    root: Path, dist: str, version: str, modules: Mapping[str, str], entry_points: Mapping[str, str]
) -> Path:
    """Write an installed-looking distribution into ``root``: module files (relative path -> source)
    and ``<dist>-<version>.dist-info`` with METADATA and entry_points.txt (group swarmlearning.merge).
    Returns the dist-info folder. ``root`` on sys.path (or PYTHONPATH) makes it discoverable."""
    for rel, source in modules.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{mp.GROUP}]\n{lines}")
    return info


def install_example(root: Path) -> Path:
    """The example plugin package (examples/merge-plugin) as an installed distribution in ``root``;
    returns the path of its fingerprinted module."""
    shutil.copytree(EXAMPLE / "swarm_clipped_mean", root / "swarm_clipped_mean")
    make_distribution(
        root, "swarm-clipped-mean", "0.1.0", {}, {"clippedmean": "swarm_clipped_mean.merge:clipped_mean"}
    )
    return root / "swarm_clipped_mean" / "merge.py"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for test distributions; modules imported from it are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(root) in str(sys.modules[name].__file__):
            del sys.modules[name]


def _models(n: int = 3, shape: tuple[int, ...] = (2, 3)) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {"w": torch.randn(shape, generator=g), "b": torch.randn(shape[0], generator=g), "n": torch.tensor(i)}
        for i in range(n)
    ]


# --------------------------------------------------------------------------- discovery and identity


def test_discovery_and_identity_of_an_installed_plugin(site: Path) -> None:
    module = install_example(site)
    assert "clippedmean" in mp.installed()
    loaded = mp.load_plugin("clippedmean")
    assert loaded.info.name == "clippedmean"
    assert (loaded.info.distribution, loaded.info.version) == ("swarm-clipped-mean", "0.1.0")
    assert loaded.info.sha256 == hashlib.sha256(module.read_bytes()).hexdigest()
    assert loaded.info.target == "swarm_clipped_mean.merge:clipped_mean"
    assert loaded.info.to_record() == {
        "name": "clippedmean",
        "distribution": "swarm-clipped-mean",
        "version": "0.1.0",
        "sha256": loaded.info.sha256,
    }


def test_fingerprint_is_of_the_code_as_imported(site: Path) -> None:
    module = install_example(site)
    first = mp.load_plugin("clippedmean").info.sha256
    module.write_text(module.read_text() + "\n# edited after the import\n")
    assert mp.load_plugin("clippedmean").info.sha256 == first  # the running code is still the old one


def test_merge_dispatches_to_the_plugin_and_names_it(site: Path) -> None:
    module = install_example(site)
    models = _models(4)
    result = merge("plugin:clippedmean", models, [1.0, 2.0, 0.0, 1.0])
    assert (
        result.plugin is not None and result.plugin.sha256 == hashlib.sha256(module.read_bytes()).hexdigest()
    )
    assert result.selected == (0, 1, 3)  # weight 0 contributes nothing
    assert set(result.state) == {"w", "b", "n"}
    assert all(result.state[k].dtype == models[0][k].dtype for k in result.state)
    assert merge("mean", models, [1.0, 2.0, 0.0, 1.0]).plugin is None


def test_example_clipped_mean_is_the_mean_where_inputs_agree_and_bounds_an_outlier(site: Path) -> None:
    install_example(site)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(50, generator=g, dtype=torch.float64)
    honest = [{"w": base + 0.01 * torch.randn(50, generator=g, dtype=torch.float64)} for _ in range(3)]
    # base - d, base, base + d: the median is base, nobody is further than the median distance |d|,
    # so nobody is clipped and the result is the weighted mean.
    d = torch.randn(50, generator=g, dtype=torch.float64)
    three = [{"w": base - d}, {"w": base.clone()}, {"w": base + d}]
    got = merge("plugin:clippedmean", three, [3.0, 1.0, 4.0]).state["w"]
    torch.testing.assert_close(got, (3 * three[0]["w"] + three[1]["w"] + 4 * three[2]["w"]) / 8)
    # One input 1000x away: the plain mean is dragged along, the clipped mean stays near the honest ones.
    outlier = {"w": base + 1000.0}
    mean = merge("mean", [*honest, outlier], [1.0] * 4).state["w"]
    clipped = merge("plugin:clippedmean", [*honest, outlier], [1.0] * 4).state["w"]
    honest_mean = torch.stack([h["w"] for h in honest]).mean(0)
    assert float((mean - honest_mean).norm()) > 1000
    assert float((clipped - honest_mean).norm()) < 0.1


# ---------------------------------------------------------------------------------- the interface

_RECORDER = """
    import torch
    SEEN = {}

    def merge(models, weights, options):
        SEEN.update(models=models, weights=weights, options=options)
        return {k: sum(w * m[k] for w, m in zip(weights.tolist(), models)).to(v.dtype)
                for k, v in models[0].items()}
"""


def test_plugin_gets_positive_weight_inputs_normalised_weights_and_read_only_options(site: Path) -> None:
    make_distribution(site, "rec", "1.2.3", {"rec_plugin.py": _RECORDER}, {"rec": "rec_plugin:merge"})
    models = _models(3)
    result = merge("plugin:rec", models, [2.0, 0.0, 6.0], trim_fraction=0.2, byzantine=1)
    seen = sys.modules["rec_plugin"].SEEN
    assert len(seen["models"]) == 2 and seen["models"][0] is models[0] and seen["models"][1] is models[2]
    assert seen["weights"].dtype == torch.float64 and seen["weights"].tolist() == [0.25, 0.75]
    assert dict(seen["options"]) == {
        "trimFraction": 0.2,
        "byzantine": 1,
        "multikrumKeep": None,
        "geomedianTol": 1e-6,
        "geomedianMaxIter": 100,
    }
    with pytest.raises(TypeError):
        seen["options"]["byzantine"] = 5
    torch.testing.assert_close(result.state["w"], 0.25 * models[0]["w"] + 0.75 * models[2]["w"])
    assert result.plugin is not None and result.plugin.version == "1.2.3"


def test_argument_and_structure_checks_run_before_the_plugin(site: Path) -> None:
    make_distribution(site, "rec", "1", {"rec_plugin.py": _RECORDER}, {"rec": "rec_plugin:merge"})
    models = _models(2)
    bad = [models[0], {**models[1], "w": torch.zeros(3, 2)}]
    with pytest.raises(MergeError, match=r"models\[1\] does not match models\[0\]"):
        merge("plugin:rec", bad, [1.0, 1.0])
    with pytest.raises(MergeError, match="weights must not all be 0"):
        merge("plugin:rec", models, [0.0, 0.0])
    with pytest.raises(MergeError, match="trim_fraction"):
        merge("plugin:rec", models, [1.0, 1.0], trim_fraction=0.7)
    assert "rec_plugin" not in sys.modules  # never loaded, never called


# ------------------------------------------------------------------------------------- the errors


def _plugin(site: Path, body: str, name: str = "bad", module: str = "bad_plugin") -> None:
    make_distribution(site, f"{name}-dist", "0.9", {f"{module}.py": body}, {name: f"{module}:merge"})


def test_unknown_plugin_names_the_installed_ones(site: Path) -> None:
    install_example(site)
    with pytest.raises(
        mp.PluginNotFound, match=r"'nosuch' is not installed.*installed plugins: .*clippedmean"
    ):
        merge("plugin:nosuch", _models(2), [1.0, 1.0])


@pytest.mark.parametrize("method", ["plugin:", "plugin:Bad", "plugin:-x", "plugin:" + "a" * 64])
def test_invalid_plugin_names_are_refused(method: str) -> None:
    with pytest.raises(mp.PluginNotFound, match="invalid: 1-63 lower-case"):
        merge(method, _models(2), [1.0, 1.0])


def test_unknown_builtin_lists_builtins_and_plugins() -> None:
    with pytest.raises(MergeError, match="mean, coordmedian.*or plugin:<name>; got 'fedavg'"):
        merge("fedavg", _models(2), [1.0, 1.0])


def test_load_failure_names_the_plugin(site: Path) -> None:
    _plugin(site, "raise ImportError('needs scipy')\n")
    with pytest.raises(mp.PluginLoadError, match=r"'bad' \(bad-dist 0.9, bad_plugin:merge\).*needs scipy"):
        merge("plugin:bad", _models(2), [1.0, 1.0])


def test_an_entry_point_that_is_not_a_function_is_refused(site: Path) -> None:
    _plugin(site, "merge = 42\n")
    with pytest.raises(mp.PluginLoadError, match="'bad'.*is a int, not a function"):
        merge("plugin:bad", _models(2), [1.0, 1.0])


def test_two_distributions_with_one_name_are_ambiguous(site: Path) -> None:
    make_distribution(site, "one", "1", {"one_p.py": _RECORDER}, {"dup": "one_p:merge"})
    make_distribution(site, "two", "2", {"two_p.py": _RECORDER}, {"dup": "two_p:merge"})
    with pytest.raises(
        mp.PluginLoadError, match=r"'dup' is declared by several distributions \(one 1, two 2\)"
    ):
        merge("plugin:dup", _models(2), [1.0, 1.0])


def test_a_raise_inside_the_plugin_names_it(site: Path) -> None:
    _plugin(site, "def merge(models, weights, options):\n    raise RuntimeError('boom')\n")
    with pytest.raises(
        mp.PluginFailed, match=r"merge plugin 'bad' \(bad-dist 0.9\) raised RuntimeError: boom"
    ):
        merge("plugin:bad", _models(2), [1.0, 1.0])


BAD_RESULTS = {
    "not-a-mapping": ("return [1, 2]", "expected a mapping of tensor names to tensors, got list"),
    "missing": ("return {'w': models[0]['w'], 'n': models[0]['n']}", "missing 'b'"),
    "extra": ("return {**models[0], 'zz': models[0]['b']}", "extra 'zz'"),
    "shape": ("return {**models[0], 'w': models[0]['w'].T}", "'w' has shape (3, 2), the inputs have (2, 3)"),
    "dtype": ("return {**models[0], 'w': models[0]['w'].double()}", "'w' has dtype torch.float64"),
    "nan": (
        "return {**models[0], 'b': models[0]['b'] * float('nan')}",
        "'b' has 2 non-finite values",
    ),
    "not-a-tensor": ("return {**models[0], 'b': [0.0, 0.0]}", "'b' is a list, not a torch.Tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_bad_results_are_refused_naming_the_plugin_and_the_problem(site: Path, case: str) -> None:
    code, says = BAD_RESULTS[case]
    module = f"bad_{case.replace('-', '_')}"
    _plugin(site, f"def merge(models, weights, options):\n    {code}\n", module=module)
    with pytest.raises(mp.PluginResultError) as info:
        merge("plugin:bad", _models(2), [1.0, 1.0])
    assert "merge plugin 'bad' (bad-dist 0.9) returned a bad result" in str(info.value)
    assert says in str(info.value)
    assert info.value.plugin == "bad" and info.value.info is not None


def test_builtins_cannot_be_shadowed(site: Path) -> None:
    zeros = "def merge(models, weights, options):\n    return {k: v * 0 for k, v in models[0].items()}\n"
    make_distribution(site, "evil", "1", {"evil_mean.py": zeros}, {"mean": "evil_mean:merge"})
    models = _models(2)
    got = merge("mean", models, [1.0, 1.0])
    assert got.plugin is None
    torch.testing.assert_close(got.state["w"], (models[0]["w"] + models[1]["w"]) / 2)
    with pytest.raises(mp.PluginNotFound, match="'mean' is a built-in method's name"):
        merge("plugin:mean", models, [1.0, 1.0])


# ----------------------------------------------------------------------------- contract parameters


def test_params_accept_plugins_and_fallbacks() -> None:
    p = validate_params(4, 2, mergeMethod="plugin:clipped.mean_v2-x", mergeFallback="MEAN")
    assert (p.mergeMethod, p.mergeFallback) == ("plugin:clipped.mean_v2-x", "mean")
    assert p.contract_settings()["mergeFallback"] == "mean"
    assert validate_params(4, 2).mergeFallback == "none"
    assert validate_params(4, 2, mergeMethod=" GeoMedian ").mergeMethod == "geomedian"


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"mergeMethod": "plugin:"}, "plugin name after 'plugin:' must be 1-63 lower-case"),
        ({"mergeMethod": "plugin:Bad"}, "plugin name after 'plugin:' must be 1-63 lower-case"),
        ({"mergeMethod": "plugin:mean"}, "built-in methods cannot be replaced by a plugin; use 'mean'"),
        ({"mergeMethod": "fedavg"}, "mergeMethod must be one of mean, coordmedian"),
        ({"mergeFallback": "plugin:x"}, "mergeFallback must be one of none, mean, coordmedian"),
        ({"mergeMethod": "plugin:x", "mergeMode": "sharded"}, "use mergeMode 'auto' or 'single'"),
        (
            {"mergeMethod": "plugin:x", "secureAggregation": True},
            "secureAggregation cannot run mergeMethod 'plugin:x'",
        ),
    ],
)
def test_params_refuse_bad_plugin_settings(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(SwarmParameterError, match=says.replace("(", r"\(").replace(")", r"\)")):
        validate_params(4, 2, **kw)


def test_environment_sets_plugin_and_fallback() -> None:
    env = {"SWARM_MERGE_METHOD": "plugin:clippedmean", "SWARM_MERGE_FALLBACK": "trimmedmean"}
    got = env_overrides(env)
    assert got == {"mergeMethod": "plugin:clippedmean", "mergeFallback": "trimmedmean"}
    assert validate_params(4, 2, **got).mergeFallback == "trimmedmean"


def test_plugins_never_shard() -> None:
    assert not may_shard({"mergeMethod": "plugin:x", "mergeMode": "auto"})
    assert not may_shard({"mergeMethod": "plugin:x", "mergeMode": "sharded"})
    assert may_shard({"mergeMethod": "mean", "mergeMode": "auto"})


def _task(**sync: Any) -> dict[str, Any]:
    return {"network": "net", "peers": 2, "sync": {"frequency": 4, "minPeers": 2, **sync}}


def test_task_spec_parses_plugin_and_fallback() -> None:
    s = TaskSpec.parse(_task(mergeMethod="plugin:clippedmean", mergeFallback="coordmedian")).sync
    assert (s.merge_method, s.merge_fallback) == ("plugin:clippedmean", "coordmedian")
    assert TaskSpec.parse(_task()).sync.merge_fallback == "none"


@pytest.mark.parametrize(
    ("sync", "privacy", "says"),
    [
        ({"mergeMethod": "plugin:"}, {}, "spec.sync.mergeMethod must be one of"),
        ({"mergeMethod": "plugin:Bad"}, {}, "spec.sync.mergeMethod must be one of"),
        ({"mergeMethod": "plugin:krum"}, {}, "spec.sync.mergeMethod must be one of"),
        ({"mergeFallback": "median"}, {}, "spec.sync.mergeFallback must be one of none, mean"),
        (
            {"mergeMethod": "plugin:x", "mergeMode": "sharded"},
            {},
            "spec.sync.mergeMode must be auto or single",
        ),
        (
            {"mergeMethod": "plugin:x"},
            {"secureAggregation": {"enabled": True}},
            "secureAggregation.enabled needs spec.sync.mergeMethod mean",
        ),
    ],
)
def test_task_spec_refuses_bad_plugin_settings(
    sync: dict[str, Any], privacy: dict[str, Any], says: str
) -> None:
    with pytest.raises(SpecError, match=says):
        TaskSpec.parse({**_task(**sync), "privacy": privacy})


# ---------------------------------------------------------------------- the leader's fallback choice


class _Ledger:
    """Records what the leader appends (the real ledger is exercised by the integration test)."""

    def __init__(self) -> None:
        self.appended: list[tuple[str, str, dict[str, Any]]] = []

    async def fail_round(self, contract: str, round_no: int, body: dict[str, Any]) -> None:
        assert body["round"] == round_no
        self.appended.append((contract, "abandon", body))


def _ctx(fallback: str | None) -> SimpleNamespace:
    notes: list[str] = []
    params = {"mergeMethod": "plugin:bad"} | ({"mergeFallback": fallback} if fallback else {})
    return SimpleNamespace(
        name="node-1",
        params=params,
        settings={},
        ledger=_Ledger(),
        note=notes.append,
        notes=notes,
        merge_options=lambda: {"trim_fraction": 0.1, "byzantine": 0},
    )


def _close() -> SimpleNamespace:
    return SimpleNamespace(
        round_no=2, contract="c", names=("node-2", "node-1"), record=SimpleNamespace(seq=7)
    )


def test_leader_merges_with_the_fallback_and_says_why(site: Path) -> None:
    _plugin(site, "def merge(models, weights, options):\n    raise ValueError('no')\n")
    ctx, models = _ctx("mean"), _models(2)
    result, used, extra = asyncio.run(
        single_mode._merge(ctx, _close(), 0, "plugin:bad", models, [1.0, 1.0])  # type: ignore[arg-type]
    )
    assert used == "mean" and result.plugin is None
    assert "merge plugin 'bad' (bad-dist 0.9) raised ValueError: no" in extra["merge_plugin_error"]
    torch.testing.assert_close(result.state["w"], (models[0]["w"] + models[1]["w"]) / 2)
    assert any("merging with mergeFallback mean" in n for n in ctx.notes)
    assert ctx.ledger.appended == []


def test_leader_without_fallback_records_the_failure_and_fails(site: Path) -> None:
    ctx = _ctx(None)
    with pytest.raises(
        RoundFailed, match=r"leader node-1 could not merge with plugin:bad: .*'bad' is not installed"
    ):
        asyncio.run(
            single_mode._merge(ctx, _close(), 1, "plugin:bad", _models(2), [1.0, 1.0])  # type: ignore[arg-type]
        )
    ((contract, kind, body),) = ctx.ledger.appended
    assert (contract, kind, body["round"], body["attempt"]) == ("c", "abandon", 2, 1)
    assert body["participants"] == ["node-1", "node-2"]  # what the ledger's rules check
    assert "'bad' is not installed" in body["merge_plugin_error"]
