"""The pure parts of the real node's image handling and configuration: the images manifest, image names as
containerd lists them, docker archives, and the checks of bad input (no node, no containerd)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.testbed import TestbedError
from tests.testbed.image_archive import write_docker_archive
from tests.testbed.images import Ctr, ImageManifest, prune_stale, same_image_ref
from tests.testbed.realnode import RealNode

pytestmark = pytest.mark.unit


def write_manifest(path: Path, images: object) -> Path:
    path.write_text(json.dumps({"images": images}))
    return path


def test_a_missing_manifest_names_make_images(tmp_path: Path) -> None:
    with pytest.raises(TestbedError, match=r"does not exist: build the images with `make images`"):
        ImageManifest.load(tmp_path / "images.json")


def test_a_malformed_manifest_says_what_is_expected(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "images.json", {"base": {"ref": "swarmlearning/base:1"}})
    with pytest.raises(TestbedError, match=r"malformed \(KeyError: 'archive'\).*`make images`"):
        ImageManifest.load(path)
    bad_id = {"base": {"ref": "swarmlearning/base:1", "archive": "/x.tar", "id": "abc"}}
    with pytest.raises(TestbedError, match=r"images.base.id must start with 'sha256:', got 'abc'"):
        ImageManifest.load(write_manifest(tmp_path / "bad-id.json", bad_id))


def test_images_are_found_by_name_and_missing_ones_and_archives_are_named(tmp_path: Path) -> None:
    archive = tmp_path / "base.tar"
    archive.write_bytes(b"")
    entries = {
        "base": {"ref": "swarmlearning/base:1", "archive": str(archive), "id": "sha256:" + "0" * 64},
        "sl": {"ref": "swarmlearning/sl:1", "archive": str(tmp_path / "sl.tar"), "id": "sha256:" + "1" * 64},
    }
    manifest = ImageManifest.load(write_manifest(tmp_path / "images.json", entries))
    assert manifest.get("base").ref == "swarmlearning/base:1"
    assert manifest.get("base").archive == archive
    with pytest.raises(TestbedError, match=r"image 'ml' is not in .* \(it has \['base', 'sl'\]\)"):
        manifest.get("ml")
    with pytest.raises(TestbedError, match=r"sl: .*sl.tar\nRebuild them with `make images`"):
        manifest.check_archives()


@pytest.mark.parametrize(
    ("listed", "wanted", "same"),
    [
        ("swarmlearning/base:1", "swarmlearning/base:1", True),
        ("registry.example/swarmlearning/base:1", "swarmlearning/base:1", True),
        ("registry.example/library/pause:1", "pause:1", True),
        ("registry.example/other/base:1", "swarmlearning/base:1", False),
        ("swarmlearning/base:2", "swarmlearning/base:1", False),
        ("sha256:abc", "swarmlearning/base:1", False),
        ("localhost/swarmlearning/base:1", "swarmlearning/base:1", False),  # no dot: not a host name
    ],
)
def test_containerds_normalized_names_match_the_short_ref(listed: str, wanted: str, same: bool) -> None:
    assert same_image_ref(listed, wanted) is same


def test_docker_archive_holds_the_layer_and_its_id_is_the_config_digest(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    binary.chmod(0o755)
    out = tmp_path / "pause.tar"
    image_id = write_docker_archive(
        out, "swarmlearning/pause:t", files={"/pause": binary}, entrypoint=["/pause"]
    )
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        (entry,) = manifest
        config_bytes = tar.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
        layer = tar.extractfile(entry["Layers"][0]).read()  # type: ignore[union-attr]
    assert entry["RepoTags"] == ["swarmlearning/pause:t"]
    assert image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    config = json.loads(config_bytes)
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    (tmp_path / "layer.tar").write_bytes(layer)
    with tarfile.open(tmp_path / "layer.tar") as tar:
        member = tar.getmember("pause")
        assert member.mode & 0o111 and member.mtime == 0 and member.uid == 0
    # Same input, same image id: archives are reproducible.
    assert (
        write_docker_archive(
            tmp_path / "again.tar", "swarmlearning/pause:t", files={"/pause": binary}, entrypoint=["/pause"]
        )
        == image_id
    )


def test_bad_archive_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give files or rootfs"):
        write_docker_archive(tmp_path / "x.tar", "a/b:1")
    with pytest.raises(ValueError, match="ref must be name:tag, got 'a/b'"):
        write_docker_archive(tmp_path / "x.tar", "a/b", files={"/f": tmp_path})


@pytest.mark.parametrize("cidr", ["10.88.0.0/24", "10.88.0.1/16", "10.88.0.1", "bridge"])
def test_bridge_cidr_must_be_the_bridges_address_in_a_slash_24(cidr: str) -> None:
    with pytest.raises(
        ValueError, match=rf"bridge_cidr must be a.b.c.1/24 \(the bridge's address\), got '{cidr}'"
    ):
        RealNode(bridge_cidr=cidr)


class RecordingCtr(Ctr):
    """A ctr whose image list is given and whose commands are recorded (prune_stale's decisions only)."""

    def __init__(self, digests: dict[str, str]) -> None:
        super().__init__(Path("/nonexistent.sock"))
        self.digests = digests
        self.commands: list[tuple[str, ...]] = []

    def image_digests(self) -> dict[str, str]:
        return dict(self.digests)

    def run(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.commands.append(args)
        return subprocess.CompletedProcess(args, 0, "", "")


def test_prune_removes_older_builds_of_project_images_only(tmp_path: Path) -> None:
    entries = {
        "sl": {"ref": "swarmlearning/sl:2", "archive": str(tmp_path / "sl.tar"), "id": "sha256:" + "2" * 64}
    }
    manifest = ImageManifest.load(write_manifest(tmp_path / "images.json", entries))
    host = "registry.example"
    ctr = RecordingCtr(
        {
            f"{host}/swarmlearning/sl:2": "sha256:new",  # the manifest's: kept
            "sha256:" + "2" * 64: "sha256:new",
            f"{host}/swarmlearning/sl:1": "sha256:old",  # an older build: removed, with its id record
            "sha256:" + "1" * 64: "sha256:old",
            f"{host}/swarmlearning/pause:testbed-1": "sha256:pause",  # the sandbox image: kept
            f"{host}/library/busybox:1": "sha256:other",  # not the project's: kept
        }
    )
    removed = prune_stale(ctr, manifest)
    assert sorted(removed) == sorted([f"{host}/swarmlearning/sl:1", "sha256:" + "1" * 64])
    assert ctr.commands == [("images", "rm", *removed)]
