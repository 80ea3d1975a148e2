"""The pure parts of the offline image build (node_images/build/images.py): input hashes, the wheel closure,
the manifest, archive pruning, the apt mirror. The build itself smoke-checks every image it makes."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    # A script, not a package module (node_images/ is the wheel's source root): load it by path.
    path = ROOT / "node_images" / "build" / "images.py"
    spec = importlib.util.spec_from_file_location("images_build", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


images = _load()


def test_input_hash_is_canonical_and_sensitive() -> None:
    a = images.input_hash({"name": "sl", "wheels": ["torch==2.15.0"], "parent": "sha256:1"})
    b = images.input_hash({"parent": "sha256:1", "wheels": ["torch==2.15.0"], "name": "sl"})
    assert a == b and len(a) == 16 and int(a, 16) >= 0
    assert images.input_hash({"name": "sl", "wheels": ["torch==2.15.1"], "parent": "sha256:1"}) != a
    assert images.input_hash({"name": "sl", "wheels": ["torch==2.15.0"], "parent": "sha256:2"}) != a


def test_tree_digest_follows_content_and_names_not_bytecode(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "top.toml").write_text("[x]\n")
    d0 = images.tree_digest(tmp_path, ["pkg", "top.toml"])
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert images.tree_digest(tmp_path, ["pkg", "top.toml"]) == d0
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    d1 = images.tree_digest(tmp_path, ["pkg", "top.toml"])
    assert d1 != d0
    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "b.py")
    assert images.tree_digest(tmp_path, ["pkg", "top.toml"]) not in (d0, d1)
    with pytest.raises(images.ImageBuildError, match="missing"):
        images.tree_digest(tmp_path, ["missing"])


def test_closure_follows_requirements_markers_and_extras() -> None:
    inst = images.Installed
    installed = {
        "app": inst("1.0", ("lib>=2", 'win-only; sys_platform == "win32"', 'extra-dep; extra == "fast"')),
        "lib": inst("2.5", ("typing-extensions",)),
        "typing-extensions": inst("4.16.0"),
        "extra-dep": inst("0.3"),
        "win-only": inst("9"),
    }
    assert images.closure(["App"], installed) == {"app": "1.0", "lib": "2.5", "typing-extensions": "4.16.0"}
    assert images.closure(["app[fast]"], installed)["extra-dep"] == "0.3"


def test_closure_names_missing_and_out_of_range_requirements() -> None:
    installed = {"app": images.Installed("1.0", ("lib>=3",)), "lib": images.Installed("2.5")}
    with pytest.raises(images.ImageBuildError, match=r"lib>=3 \(needed by app\): the venv has lib 2.5"):
        images.closure(["app"], installed)
    with pytest.raises(images.ImageBuildError, match="nothere.*not installed"):
        images.closure(["nothere"], installed)


def test_operator_sn_and_console_closures_carry_no_torch() -> None:
    # The real requirement files against the venv: what the torch-free images install.
    installed = images.venv_installed()
    for name in ("operator", "sn", "console"):
        reqs = images.read_requirements(images.REQUIREMENTS / f"{name}.txt")
        pins = images.closure(reqs, installed)
        assert "torch" not in pins and not any(p.startswith("nvidia") for p in pins), name
        assert {"cryptography", "aetcd", "grpcio"} <= pins.keys()
    torch = images.closure(images.read_requirements(images.REQUIREMENTS / "torch.txt"), installed)
    assert "torch" in torch and "numpy" in torch


def test_wheel_pin_parses_wheel_names() -> None:
    assert images.wheel_pin("PyYAML-6.0.4-cp311-cp311-manylinux_2_17_x86_64.whl") == ("pyyaml", "6.0.4")
    assert images.wheel_pin("typing_extensions-4.16.0-py3-none-any.whl") == ("typing-extensions", "4.16.0")
    assert images.wheel_pin("foo-1.0-1build-py3-none-any.whl") == ("foo", "1.0")
    with pytest.raises(images.ImageBuildError, match="not a wheel"):
        images.wheel_pin("foo-1.0.tar.gz")


def test_manifest_lists_archived_images_only() -> None:
    e = images.Entry
    entries = {
        "sl": e("sl", "0" * 16, "swarmlearning/sl:0.1.0", "sha256:aa", "localhost/x", "/c/sl-0123.tar"),
        "torch-base": e("torch-base", "1" * 16, "swarmlearning/torch-base:0.1.0", "sha256:bb", "localhost/y"),
    }
    assert images.manifest(entries) == {
        "images": {"sl": {"ref": "swarmlearning/sl:0.1.0", "archive": "/c/sl-0123.tar", "id": "sha256:aa"}}
    }
    assert set(images.ARCHIVED) == {"base", "operator", "sn", "console", "sl", "ml", "ml-tensorflow"}
    assert set(images.DEFAULT) == set(images.ARCHIVED) | {"ml-transformers"}


def test_stale_archives_are_other_hashes_of_the_same_name(tmp_path: Path) -> None:
    for name, h in (("sl", "a"), ("sl", "b"), ("ml", "a"), ("base", "c"), ("torch-base", "d")):
        (tmp_path / f"{name}-{h * 16}.tar").write_bytes(b"")
    (tmp_path / "sl-notahash.tar").write_bytes(b"")
    (tmp_path / f"sl-{'e' * 16}.tar.tmp").write_bytes(b"")
    keep = "sl-" + "a" * 16 + ".tar"
    stale = [p.name for p in images.stale_archives(tmp_path, "sl", keep)]
    assert stale == [f"sl-{'b' * 16}.tar", f"sl-{'e' * 16}.tar.tmp"]
    assert images.stale_archives(tmp_path, "base", "base-" + "c" * 16 + ".tar") == []


def test_archive_image_id_reads_the_docker_archive_manifest(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        data = json.dumps([{"Config": "abc123.json", "RepoTags": ["swarmlearning/sl:0.1.0"], "Layers": []}])
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data.encode()))
    assert images.archive_image_id(path) == "sha256:abc123"


def test_apt_mirror_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64] http://other.example/debian bookworm main\n"
    )
    assert images.apt_mirror([deb822], "bookworm") == "http://mirror.example/debian"
    assert images.apt_mirror([one_line], "bookworm") == "http://other.example/debian"
    with pytest.raises(images.ImageBuildError, match="no apt source for 'trixie'"):
        images.apt_mirror([deb822, one_line], "trixie")


def test_image_requirements_match_pyproject() -> None:
    # The images' requirement files repeat pyproject's ranges: catch drift between the two.
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["ml"]  # ML images: the ml extra
    declared = {images.canonical(Requirement(d).name): str(Requirement(d).specifier) for d in deps}
    for path in sorted(images.REQUIREMENTS.glob("*.txt")):
        for line in images.read_requirements(path):
            req = Requirement(line)
            name = images.canonical(req.name)
            assert name in declared, f"{path.name}: {name} is not a dependency in pyproject.toml"
            assert str(req.specifier) == declared[name], f"{path.name}: {line} vs pyproject {declared[name]}"
