"""Container images for the real node: the images manifest `make images` writes, and `ctr` (the containerd
client) to import archives into the node's containerd (namespace ``k8s.io``, the one the kubelet's CRI
uses). No registry is involved anywhere: pods name the images with ``imagePullPolicy: Never`` or
``IfNotPresent``.

Manifest (``${SWARM_IMAGE_CACHE:-~/.cache/swarm-learning/images}/images.json``)::

    {"images": {"base": {"ref": "swarmlearning/base:<tag>", "archive": "/abs/base-<hash>.tar",
                         "id": "sha256:<config digest>"}, ...}}
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed.binaries import PAUSE_IMAGE, TestbedError

CRI_NAMESPACE = "k8s.io"
PROJECT_PREFIX = "swarmlearning/"
PAUSE_REPOSITORY = PAUSE_IMAGE.rsplit(":", 1)[0]
IMAGE_NAMES = ("base", "operator", "sn", "sl", "ml")
# Seconds one `ctr images import` may take: multi-GB archives (torch) take a minute or two on 2 cores.
IMPORT_TIMEOUT = 900.0


def image_cache() -> Path:
    """``$SWARM_IMAGE_CACHE``, default ``~/.cache/swarm-learning/images`` (where `make images` writes)."""
    return Path(os.environ.get("SWARM_IMAGE_CACHE") or Path.home() / ".cache/swarm-learning/images")


@dataclass(frozen=True)
class ImageRef:
    """One image: ``ref`` (``name:tag``, no registry host), its docker-archive ``archive`` and its ``id``
    (``sha256:<config digest>``, what containerd and the kubelet report as the image id)."""

    name: str
    ref: str
    archive: Path
    id: str


@dataclass(frozen=True)
class ImageManifest:
    """The images `make images` built (``images`` by name) and where the manifest lives."""

    path: Path
    images: dict[str, ImageRef]

    @staticmethod
    def default_path() -> Path:
        return image_cache() / "images.json"

    @classmethod
    def load(cls, path: Path | None = None) -> ImageManifest:
        """Read the manifest (default ``image_cache()/images.json``); TestbedError naming `make images`
        when it is missing or malformed."""
        path = path or cls.default_path()
        if not path.is_file():
            raise TestbedError(
                f"the images manifest {path} does not exist: build the images with `make images`"
            )
        try:
            raw = json.loads(path.read_text())
            images = {
                name: ImageRef(name, str(entry["ref"]), Path(entry["archive"]), str(entry["id"]))
                for name, entry in raw["images"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise TestbedError(
                f"the images manifest {path} is malformed ({type(e).__name__}: {e}); expected "
                '{"images": {"<name>": {"ref": ..., "archive": ..., "id": ...}}}; rebuild with `make images`'
            ) from e
        for image in images.values():
            if not image.id.startswith("sha256:"):
                raise TestbedError(
                    f"{path}: images.{image.name}.id must start with 'sha256:', got {image.id!r}"
                )
        return cls(path, images)

    def get(self, name: str) -> ImageRef:
        """The image called ``name``; TestbedError naming `make images` when the manifest lacks it."""
        if name not in self.images:
            raise TestbedError(
                f"image {name!r} is not in {self.path} (it has {sorted(self.images)}): "
                "build it with `make images`"
            )
        return self.images[name]

    def only(self, *names: str) -> ImageManifest:
        """This manifest narrowed to ``names`` (a node that needs fewer images imports fewer: the SL
        image alone takes about two minutes); TestbedError as ``get`` for a name it lacks."""
        return ImageManifest(self.path, {name: self.get(name) for name in names})

    def check_archives(self) -> None:
        """TestbedError listing archives the manifest names that do not exist."""
        missing = [f"{i.name}: {i.archive}" for i in self.images.values() if not i.archive.is_file()]
        if missing:
            raise TestbedError(
                f"image archives listed in {self.path} are missing:\n  " + "\n  ".join(missing) + "\n"
                "Rebuild them with `make images`."
            )


def same_image_ref(listed: str, wanted: str) -> bool:
    """True if containerd's ``listed`` name is ``wanted`` as written or as normalized: containerd prefixes
    a short name with its default registry host (and ``library/`` for one-component names)."""
    if listed == wanted:
        return True
    host, sep, rest = listed.partition("/")
    if not sep or "." not in host:
        return False
    return rest == wanted or ("/" not in wanted.rsplit(":", 1)[0] and rest == f"library/{wanted}")


class Ctr:
    """``ctr`` against one containerd socket, in the CRI namespace."""

    def __init__(self, address: Path, namespace: str = CRI_NAMESPACE) -> None:
        self.address = address
        self.namespace = namespace

    def run(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ctr ARGS`` (``timeout`` in s); TestbedError with its stderr if it fails and ``check``."""
        argv = ["ctr", f"--address={self.address}", f"--namespace={self.namespace}", *args]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise TestbedError(f"timed out after {timeout:g} s: {shlex.join(argv)}") from e
        except FileNotFoundError as e:
            raise TestbedError("`ctr` is not on PATH: `make testbed` installs containerd") from e
        if check and result.returncode != 0:
            raise TestbedError(
                f"{shlex.join(argv)} failed with exit code {result.returncode}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    def image_digests(self) -> dict[str, str]:
        """Image name -> target (manifest or index) digest, for every image in the namespace."""
        digests = {}
        for line in self.run("images", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                digests[fields[0]] = fields[2]
        return digests

    def _content(self, digest: str) -> Any:
        return json.loads(self.run("content", "get", digest).stdout)

    def config_digest(self, target: str) -> str | None:
        """The image id (config digest) behind a manifest or (for amd64) an index digest, None if unknown."""
        doc = self._content(target)
        if "manifests" in doc:  # an index: the linux/amd64 entry
            for entry in doc["manifests"]:
                platform = entry.get("platform") or {}
                if (
                    platform.get("os", "linux") == "linux"
                    and platform.get("architecture", "amd64") == "amd64"
                ):
                    doc = self._content(entry["digest"])
                    break
            else:
                return None
        config = doc.get("config") or {}
        return str(config["digest"]) if "digest" in config else None

    def image_id(self, ref: str) -> str | None:
        """The id of the image named ``ref`` (short or normalized name), None if it is not there."""
        for name, target in self.image_digests().items():
            if same_image_ref(name, ref):
                return self.config_digest(target)
        return None


@dataclass(frozen=True)
class ImportResult:
    """What ``import_image`` did: ``imported`` False when the same id was already present; ``seconds`` wall
    time including the check."""

    name: str
    ref: str
    imported: bool
    seconds: float


def import_image(ctr: Ctr, image: ImageRef) -> ImportResult:
    """Import ``image``'s archive unless containerd already has ``image.ref`` with ``image.id``.

    The layers are unpacked into the default (overlayfs) snapshotter right away, so a pod's first start
    does not pay for it. TestbedError when the archive is missing or gives a different id.
    """
    started = time.monotonic()
    if ctr.image_id(image.ref) == image.id:
        return ImportResult(image.name, image.ref, False, time.monotonic() - started)
    if not image.archive.is_file():
        raise TestbedError(f"image archive {image.archive} ({image.ref}) does not exist: run `make images`")
    ctr.run("images", "import", str(image.archive), timeout=IMPORT_TIMEOUT)
    got = ctr.image_id(image.ref)
    if got != image.id:
        raise TestbedError(
            f"importing {image.archive} gave {image.ref} the id {got}, the manifest says {image.id}: "
            "the archive and the manifest disagree; rebuild with `make images`"
        )
    return ImportResult(image.name, image.ref, True, time.monotonic() - started)


def import_manifest(ctr: Ctr, manifest: ImageManifest) -> list[ImportResult]:
    """Import every image of ``manifest`` (see ``import_image``), then remove older builds of the project's
    images from the store (``prune_stale``)."""
    results = [import_image(ctr, image) for image in manifest.images.values()]
    prune_stale(ctr, manifest)
    return results


def _project_repository(name: str) -> str | None:
    """``swarmlearning/<x>`` of a listed image name (short or with a registry host), else None."""
    host, sep, rest = name.partition("/")
    path = rest if sep and "." in host else name
    repository = path.rsplit(":", 1)[0]
    return repository if repository.startswith(PROJECT_PREFIX) else None


def prune_stale(ctr: Ctr, manifest: ImageManifest) -> list[str]:
    """Remove the project's images (``swarmlearning/*``, except the test bed's pause image) that the
    manifest no longer names, with the id records containerd's CRI keeps for them, so the persistent store
    does not grow with every rebuild (containerd then frees their content). Returns the names removed."""
    digests = ctr.image_digests()
    wanted = [image.ref for image in manifest.images.values()]

    def is_wanted(name: str) -> bool:
        return any(same_image_ref(name, ref) for ref in wanted)

    stale = [
        name
        for name in digests
        if (repo := _project_repository(name)) and repo != PAUSE_REPOSITORY and not is_wanted(name)
    ]
    kept_targets = {
        digest for name, digest in digests.items() if not name.startswith("sha256:") and name not in stale
    }
    stale_targets = {digests[name] for name in stale} - kept_targets
    stale += [n for n, d in digests.items() if n.startswith("sha256:") and d in stale_targets]
    if stale:
        ctr.run("images", "rm", *stale)
    return stale
