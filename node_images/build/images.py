"""Builds the operator, SN, console, SL and ML images offline (`make images`): no registry, no network.

    python node_images/build/images.py [--only NAME ...] [--force]     (run by the venv's Python)
    python node_images/build/images.py wheels                          (only the wheelhouse)

Steps, each cached by a content hash of its inputs under $SWARM_IMAGE_CACHE (default
~/.cache/swarm-learning/images), so a warm run only hashes and says what it skipped:

1. base: a Debian bookworm rootfs from ``debootstrap --variant=minbase`` with python3 and tini (the apt
   mirror is read from the machine's apt sources at run time), docs/locales/apt lists removed, committed
   as ``swarmlearning/base:<recipe hash>``.
2. wheelhouse: the exact versions installed in the venv of every package an image needs (the closure of
   node_images/build/requirements/<set>.txt), fetched once with ``pip wheel --no-deps`` into a pool, plus
   the project's own wheel built from the repo (keyed by a hash of its sources).
3. images: ``buildah bud`` of the Dockerfiles FROM the base, with the image's wheels bind-mounted at
   /wheels (``-v``; the wheels never become a layer), ``--network none``. SL and ML share one torch-base
   image, so containerd stores its layers once. Each image is smoke-checked by running its program.
4. output: one docker-archive per image, ``<name>-<hash>.tar`` (older ones of the same name are
   deleted), and images.json = ``{"images": {name: {"ref", "archive", "id"}}}``.

buildah keeps its storage in <cache>/storage (daemonless: nothing to start or stop).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements"
CHART = ROOT / "charts" / "swarm-learning" / "Chart.yaml"
PROJECT = "swarm-learning-k8s"
PYTHON = "3.11"
"""Python of Debian bookworm (the base image): the wheels are picked for it, so the venv must match."""
NODE_UID = 65532
"""uid/gid the images run as (operator/swarm_operator/names.py NODE_UID)."""
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
"""The VMs lack CAP_SYS_RESOURCE: runc cannot raise limits above the hard ones, so ask for less."""
COMMAND_TIMEOUT = 3600.0
"""Seconds any one external command (debootstrap, pip, buildah) may take before the build fails."""
LOCK_TIMEOUT = 7200.0
"""Seconds to wait for another `make images` on the same cache to finish (one build at a time)."""

# What the base image is made of; changing anything here rebuilds it (and so every image).
BASE_RECIPE: dict[str, object] = {
    "suite": "bookworm",
    "variant": "minbase",
    "include": ["python3", "python-is-python3", "tini"],
    # Removed after debootstrap: documentation, locales, apt's package lists and caches, logs, the device
    # nodes debootstrap made (runtimes mount /dev), and Debian's "externally managed" marker (the wheels
    # are installed into this image's own Python, which nothing else manages).
    "remove": [
        "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*",
        "usr/share/lintian/*", "usr/share/common-licenses/*", "var/lib/apt/lists/*", "var/cache/apt/*",
        "var/cache/debconf/*-old", "var/log/*", "dev/*", "run/*", "tmp/*",
        "usr/lib/python3.11/EXTERNALLY-MANAGED",
    ],
    "recipe": 1,
}  # fmt: skip


class ImageBuildError(RuntimeError):
    """A build step failed; the message names the step, the command and where its log is."""


@dataclass(frozen=True)
class ImageSpec:
    """One image: how it is built and checked.

    `requirements` names a file in node_images/build/requirements (without .txt); `parent` is the image it
    is built FROM (its id enters the hash); `archive`: written as a docker-archive listed in images.json
    (torch-base and etcd are intermediates, kept only in buildah's storage).
    """

    name: str
    dockerfile: str | None = None
    parent: str | None = None
    requirements: tuple[str, ...] = ()
    project: bool = False
    etcd: bool = False
    archive: bool = True
    smoke: tuple[tuple[str, ...], ...] = ()


SMOKE_NO_TORCH = "import sys, {mod}; assert 'torch' not in sys.modules, 'torch was imported'"
SMOKE_ACCOUNTANT = "from swarmlearning.privacy.accountant import site_epsilon; site_epsilon(1.0, 1, 1e-5)"
SMOKE_NO_PIP = ("sh", "-c", "! python -m pip --version 2>/dev/null")
"""Offline images get no pip (it runs from its wheel during the build)."""
SPECS: dict[str, ImageSpec] = {
    s.name: s
    for s in (
        ImageSpec("base", smoke=(("python3", "-c", "import ssl, sqlite3, json"), ("tini", "--version"))),
        ImageSpec("etcd", etcd=True, archive=False),
        ImageSpec(
            "operator", "Dockerfile", "base", ("operator",), project=True,
            smoke=(
                ("swarm-operator", "--help"),
                ("python", "-c", SMOKE_NO_TORCH.format(mod="swarm_operator.main, swarm_operator.handlers")),
                ("sh", "-c", "! python -c 'import torch' 2>/dev/null"),
                SMOKE_NO_PIP,
            ),
        ),
        ImageSpec(
            "sn", "node_images/Dockerfile.sn", "base", ("sn",), project=True, etcd=True,
            smoke=(
                ("etcd", "--version"),
                ("swarmctl", "sn", "start", "--help"),
                ("python", "-c", SMOKE_NO_TORCH.format(mod="swarmlearning.sn.node, swarmlearning.ledger")),
                ("sh", "-c", "! python -c 'import torch' 2>/dev/null"),
                SMOKE_NO_PIP,
            ),
        ),
        ImageSpec(
            # swarm-console: REST API and web UI; the torch-free ledger/pki/etcd modules and the weights
            # channel client only.
            "console", "node_images/Dockerfile.console", "base", ("console",), project=True,
            smoke=(
                ("swarm-console", "--help"),
                ("python", "-c", SMOKE_NO_TORCH.format(mod="swarmlearning.console.main")),
                ("sh", "-c", "! python -c 'import torch' 2>/dev/null"),
                SMOKE_NO_PIP,
            ),
        ),
        ImageSpec("torch-base", "node_images/Dockerfile.torch", "base", ("torch",), archive=False,
                  smoke=(("python", "-c", "import numpy, safetensors, sklearn, torch; torch.ones(2)"),)),
        ImageSpec("sl", "node_images/Dockerfile.sl", "torch-base", ("torch", "node"), project=True,
                  smoke=(("python", "-m", "swarmlearning.sl", "--help"),
                         # --help stops before the node's own imports (metrics, peers, merge) are loaded
                         ("python", "-c", "import swarmlearning.sl.node, swarmlearning.sl.metrics"),
                         # the accountant site-level DP needs (dp-accounting, scipy), run once
                         ("python", "-c", SMOKE_ACCOUNTANT),
                         SMOKE_NO_PIP)),
        ImageSpec(
            "ml", "node_images/Dockerfile.ml", "torch-base", ("torch", "node", "ml-torch"), project=True,
            smoke=(
                ("tini", "--", "python", "-c", "from swarmlearning.pyt import SwarmCallback"),
                ("python", "-c", "import torchvision, torchmetrics"),
                ("python", "-c", "import swarmlearning.pyt.privacy"),  # DP-SGD: Opacus
                ("python", "-m", "swarmlearning.demo.digits", "--help"),
                SMOKE_NO_PIP,
            ),
        ),
        ImageSpec(
            "ml-tensorflow", "node_images/Dockerfile.ml-tensorflow", "base", ("tensorflow",), project=True,
            smoke=(
                ("python", "-c", SMOKE_NO_TORCH.format(mod="tensorflow, keras, swarmlearning.tf")
                 + "; from swarmlearning.tf import SwarmCallback"),
                SMOKE_NO_PIP,
            ),
        ),
        ImageSpec(
            # Kept in buildah's storage only (docs/images.md: export): an archive would repeat the 6 GB of
            # torch layers a third time, and no test pod runs it.
            "ml-transformers", "node_images/Dockerfile.ml-transformers", "torch-base",
            ("torch", "transformers"), project=True, archive=False,
            smoke=(
                ("python", "-c", "import peft, transformers; from swarmlearning.hf_transformers import "
                 "SwarmCallback"),
                SMOKE_NO_PIP,
            ),
        ),
    )
}  # fmt: skip
ARCHIVED = tuple(n for n, s in SPECS.items() if s.archive)
"""The images of images.json: base, operator, sn, console, sl, ml, ml-tensorflow."""
DEFAULT = (*ARCHIVED, "ml-transformers")
"""What `make images` builds (and `--only` may name): the archived images and ml-transformers."""


# ------------------------------------------------------------------------------------------- pure parts


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path, paths: Iterable[str]) -> str:
    """sha256 over the relative names and contents of the files under `paths` (files or folders below
    `root`), skipping byte-code caches; the same files give the same digest on any machine."""
    files: list[Path] = []
    for p in paths:
        full = root / p
        if full.is_file():
            files.append(full)
        elif full.is_dir():
            files += [
                f for f in full.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo")
            ]  # fmt: skip
        else:
            raise ImageBuildError(f"input {full} does not exist")
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def input_hash(inputs: Mapping[str, object]) -> str:
    """16 hex digits of sha256 over the canonical JSON of an image's inputs (any JSON value)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def canonical(name: str) -> str:
    """PEP 503 normalised name (``PyYAML`` -> ``pyyaml``, ``typing_extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Installed:
    """A distribution as the venv has it: version and Requires-Dist lines."""

    version: str
    requires: tuple[str, ...] = ()


def closure(requirements: Iterable[str], installed: Mapping[str, Installed]) -> dict[str, str]:
    """{canonical name: version} of `requirements` and everything they need, as installed.

    `installed` maps canonical names. Environment markers are evaluated for this interpreter (the base
    image's Python and platform match the venv's: checked by the caller); extras are followed. Raises
    ImageBuildError naming the requirement when a package is missing or its version is out of range.
    """
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, str, frozenset[str]]] = [(r, "the image", frozenset()) for r in requirements]
    while todo:
        line, needed_by, parent_extras = todo.pop()
        req = Requirement(line)
        if req.marker is not None and not any(
            req.marker.evaluate({"extra": e}) for e in (parent_extras or {""})
        ):
            continue
        name = canonical(req.name)
        dist = installed.get(name)
        if dist is None:
            raise ImageBuildError(f"{req} (needed by {needed_by}) is not installed in the venv")
        if not req.specifier.contains(dist.version, prereleases=True):
            raise ImageBuildError(f"{req} (needed by {needed_by}): the venv has {name} {dist.version}")
        pins[name] = dist.version
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        todo += [(r, name, frozenset(req.extras)) for r in dist.requires]
    return dict(sorted(pins.items()))


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a requirements file, without comments and blank lines."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def wheel_pin(filename: str) -> tuple[str, str]:
    """(canonical name, version) of a wheel file name (PEP 427); ImageBuildError when it is none."""
    m = WHEEL_NAME.match(filename)
    if m is None:
        raise ImageBuildError(f"{filename} is not a wheel file name")
    return canonical(m["name"]), m["version"]


@dataclass(frozen=True)
class Entry:
    """One built image: the hash of its inputs, its reference, its id and (if archived) its archive."""

    name: str
    hash: str
    ref: str
    id: str
    storage_ref: str
    archive: str | None = None


def manifest(entries: Mapping[str, Entry]) -> dict[str, dict[str, dict[str, str]]]:
    """images.json: ``{"images": {name: {"ref", "archive", "id"}}}`` for the archived images, by name."""
    return {
        "images": {
            n: {"ref": e.ref, "archive": e.archive, "id": e.id}
            for n, e in sorted(entries.items())
            if e.archive is not None
        }
    }


def archive_name(name: str, digest: str) -> str:
    return f"{name}-{digest}.tar"


def stale_archives(cache: Path, name: str, keep: str) -> list[Path]:
    """Archives of image `name` in `cache` other than `keep` (file name), and unfinished ones (`.tar.tmp`,
    from an interrupted run): what pruning deletes."""
    pat = re.compile(rf"^{re.escape(name)}-[0-9a-f]{{16}}\.tar(\.tmp)?$")
    return sorted(p for p in cache.iterdir() if pat.match(p.name) and p.name != keep)


def archive_image_id(archive: Path) -> str:
    """``sha256:<config digest>`` of the single image in a docker-archive (its image id)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise ImageBuildError(f"{archive} has no manifest.json: not a docker-archive")
        items = json.load(member)
    if len(items) != 1:
        raise ImageBuildError(f"{archive} holds {len(items)} images, expected 1")
    config = str(items[0]["Config"])
    return "sha256:" + Path(config).name.removesuffix(".json")


def apt_mirror(sources: Sequence[Path], suite: str) -> str:
    """The first Debian mirror URI the machine's apt sources use for `suite` (deb822 or one-line)."""
    for path in sources:
        text = path.read_text()
        if path.suffix == ".sources":
            for para in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in para.splitlines():
                    if ":" in line and not line.lstrip().startswith("#"):
                        key, value = line.split(":", 1)
                        fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    raise ImageBuildError(
        f"no apt source for {suite!r} in {', '.join(map(str, sources)) or '(none)'}:"
        " debootstrap needs a mirror"
    )


# ------------------------------------------------------------------------------------------ the builder


def say(msg: str) -> None:
    print(f">>> images: {msg}", flush=True)


def run(cmd: Sequence[str], log: Path | None = None, **kw: object) -> str:
    """Runs a command (stdout returned, or appended to `log`); ImageBuildError with the tail on failure."""
    kwargs: dict[str, object] = {"timeout": COMMAND_TIMEOUT, "text": True, **kw}
    try:
        if log is None:
            p = subprocess.run(cmd, capture_output=True, **kwargs)  # type: ignore[call-overload]
            out, err = p.stdout, p.stderr
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:
                f.write(f"\n$ {' '.join(cmd)}\n")
                f.flush()
                p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
            out, err = "", log.read_text()[-4000:]
    except subprocess.TimeoutExpired as e:
        raise ImageBuildError(f"{cmd[0]} did not end within {COMMAND_TIMEOUT:.0f} s: {' '.join(cmd)}") from e
    except FileNotFoundError as e:
        raise ImageBuildError(f"{cmd[0]} is not installed (needed for: {' '.join(cmd)})") from e
    if p.returncode != 0:
        where = f" (log: {log})" if log else ""
        raise ImageBuildError(f"failed with exit code {p.returncode}{where}: {' '.join(cmd)}\n{err[-4000:]}")
    return str(out)


def ensure_tools() -> None:
    """Installs buildah, debootstrap, skopeo, runc (what the build runs) with apt-get when missing."""
    needed = {"buildah": "buildah", "debootstrap": "debootstrap", "skopeo": "skopeo", "runc": "runc"}
    missing = [pkg for tool, pkg in needed.items() if shutil.which(tool) is None]
    if missing:
        say(f"installing {' '.join(missing)} with apt-get (missing on this machine)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update"], env=env)  # a fresh machine may have no package lists yet
        run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)


def venv_installed() -> dict[str, Installed]:
    """The distributions of the running interpreter (the venv), by canonical name."""
    from importlib import metadata

    out: dict[str, Installed] = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name:
            out[canonical(name)] = Installed(d.version, tuple(d.requires or ()))
    return out


@dataclass
class Builder:
    """One `make images` run: the cache folder, buildah's storage, and what is built so far."""

    cache: Path
    tag: str
    force: frozenset[str] = frozenset()
    dry_run: bool = False
    testbed_cache: Path = field(default_factory=lambda: Path(
        os.environ.get("SWARM_TESTBED_CACHE") or Path.home() / ".cache" / "swarm-learning" / "testbed"))
    state: dict[str, Entry] = field(default_factory=dict)
    done: dict[str, Entry] = field(default_factory=dict)
    installed: dict[str, Installed] = field(default_factory=dict)
    built: list[str] = field(default_factory=list)

    # -------------------------------------------------------------------------------- paths and state

    @property
    def state_file(self) -> Path:
        return self.cache / "state.json"

    @property
    def manifest_file(self) -> Path:
        return self.cache / "images.json"

    def load_state(self) -> None:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        self.state = {n: Entry(**e) for n, e in raw.items()}
        # A cache folder carried to another path (an air-gapped site): its archives are where it is now.
        for n, e in self.state.items():
            if e.archive and not Path(e.archive).is_file() and (self.cache / Path(e.archive).name).is_file():
                self.state[n] = dataclasses.replace(e, archive=str(self.cache / Path(e.archive).name))

    def save(self) -> None:
        """Writes state.json and images.json (atomically: readers never see half a file)."""
        for path, data in ((self.state_file, {n: e.__dict__ for n, e in sorted(self.state.items())}),
                           (self.manifest_file, manifest(self.state))):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(path)

    def buildah(self, *args: str, log: Path | None = None) -> str:
        storage = ("--root", str(self.cache / "storage"), "--runroot", str(self.cache / "run"),
                   "--storage-driver", "overlay")
        return run(["buildah", *storage, *args], log=log)

    def write_archive(self, storage_ref: str, path: Path, ref: str, log: Path) -> None:
        """A docker-archive at ``path`` holding the image ``storage_ref`` under the one name ``ref``."""
        store = f"containers-storage:[overlay@{self.cache / 'storage'}+{self.cache / 'run'}]{storage_ref}"
        run(["skopeo", "copy", "--quiet", store, f"docker-archive:{path}:{ref}"], log=log)

    def log(self, name: str) -> Path:
        return self.cache / "logs" / f"{name}.log"

    def storage_id(self, ref: str) -> str | None:
        try:
            return self.buildah("images", "--no-trunc", "--format", "{{.ID}}", ref).split()[0]
        except (ImageBuildError, IndexError):
            return None

    # ------------------------------------------------------------------------------------- inputs

    def etcd_binary(self) -> Path:
        path = self.testbed_cache / "k8s-v1.34.4" / "bin" / "etcd"
        if not os.access(path, os.X_OK):
            raise ImageBuildError(f"the SN image needs the test bed's etcd {path}: run `make testbed` first")
        return path

    def pins(self, spec: ImageSpec) -> dict[str, str]:
        if not self.installed:
            self.installed = venv_installed()
        reqs = [r for s in spec.requirements for r in read_requirements(REQUIREMENTS / f"{s}.txt")]
        pins = closure(reqs, self.installed)
        pins["pip"] = self.installed["pip"].version  # run from its wheel to install; never installed
        return dict(sorted(pins.items()))

    def sources_digest(self) -> str:
        return tree_digest(ROOT, ["pyproject.toml", "README.md", "operator/swarm_operator",
                                  "node_images/swarmlearning"])

    def inputs(self, spec: ImageSpec, parent: Entry | None) -> dict[str, object]:
        """Everything that decides an image's content (what its hash is computed from)."""
        # "builder": bump it when a change here changes what the images contain (this file is no input).
        inputs: dict[str, object] = {"name": spec.name, "tag": self.tag, "builder": 1}
        if spec.name == "base":
            inputs["recipe"] = BASE_RECIPE
        if spec.dockerfile:
            inputs["dockerfile"] = sha256_file(ROOT / spec.dockerfile)
            inputs["install.sh"] = sha256_file(HERE / "install.sh")
        if parent is not None:
            inputs["parent"] = parent.id
        if spec.requirements:
            inputs["wheels"] = [f"{n}=={v}" for n, v in self.pins(spec).items()]
        if spec.project:
            inputs["sources"] = self.sources_digest()
        if spec.etcd:
            inputs["etcd"] = sha256_file(self.etcd_binary())
        if spec.etcd and spec.dockerfile:  # the SN image copies etcd from the etcd image
            inputs["etcd_image"] = self.ensure("etcd", in_storage=False).id
        return inputs

    # ------------------------------------------------------------------------------------ the chain

    def ensure(self, name: str, in_storage: bool) -> Entry:
        """The current Entry of image `name`, built when its inputs changed; `in_storage`: also make sure
        buildah's storage holds it (a child is about to be built FROM it)."""
        key = f"{name}:{int(in_storage)}"
        if key in self.done:
            return self.done[key]
        spec = SPECS[name]
        parent = self.ensure(spec.parent, in_storage=False) if spec.parent else None
        digest = input_hash(self.inputs(spec, parent))
        old = self.state.get(name)
        fresh = (
            name not in self.force and old is not None and old.hash == digest
            and (old.archive is None or Path(old.archive).is_file())
        )  # fmt: skip
        if fresh and old is not None:
            entry = old
            sid = self.storage_id(entry.storage_ref) if in_storage else None
            # Missing, or another build under that name (one that died before saving its state).
            if in_storage and (sid or "").removeprefix("sha256:") != entry.id.removeprefix("sha256:"):
                if entry.archive is None:
                    fresh = False  # an intermediate that only lived in storage: rebuild it
                else:
                    say(f"{name}: loading {entry.archive} into buildah's storage")
                    pulled = self.buildah("pull", "--quiet", f"docker-archive:{entry.archive}").split()
                    self.buildah("tag", pulled[-1], entry.storage_ref)
        if not fresh and self.dry_run:
            say(f"{name}: would be built (inputs {digest})")
            entry = Entry(name, digest, "", f"unbuilt:{digest}", "")
            self.built.append(name)
        elif not fresh:
            if parent is not None:
                parent = self.ensure(spec.parent or "", in_storage=True)
            digest = input_hash(self.inputs(spec, parent))
            entry = self.build(spec, digest, parent)
        elif not in_storage:
            say(f"{name}: up to date ({entry.ref}, inputs {digest})")
        self.done[key] = entry
        if in_storage or not fresh:  # just built: in storage too
            self.done[f"{name}:0"] = self.done[f"{name}:1"] = entry
        return entry

    def build(self, spec: ImageSpec, digest: str, parent: Entry | None) -> Entry:
        start = time.monotonic()
        log = self.log(spec.name)
        log.unlink(missing_ok=True)
        if spec.name == "base":
            ref = f"swarmlearning/base:bookworm-{digest[:12]}"
        elif spec.name == "etcd":
            ref = f"swarmlearning/etcd:{digest[:12]}"
        else:
            ref = f"swarmlearning/{spec.name}:{self.tag}"
        # buildah's own name for a local image. `buildah push` would write every name the image has in
        # storage into the archive (a `localhost/` one becomes a second image name in containerd), so the
        # archive is written by skopeo, which names the image only as given (see `write_archive`).
        storage_ref = f"localhost/{ref}"
        say(f"{spec.name}: building {ref} (inputs {digest}; log {log})")
        if spec.name == "base":
            self.build_base(storage_ref, log)
        elif spec.name == "etcd":
            self.build_etcd(storage_ref, log)
        else:
            assert spec.dockerfile is not None and parent is not None
            self.build_dockerfile(spec, storage_ref, parent, log)
        storage_id = self.storage_id(storage_ref)
        if storage_id is None:
            raise ImageBuildError(f"{spec.name}: {storage_ref} is not in buildah's storage after the build")
        self.smoke(spec, storage_ref, log)
        image_id, archive = "sha256:" + storage_id.removeprefix("sha256:"), None
        if spec.archive:
            path = self.cache / archive_name(spec.name, digest)
            tmp = path.with_suffix(".tar.tmp")
            # Older archives go first: the torch images' are 6 GB each, and the disk has to hold the new one.
            for stale in stale_archives(self.cache, spec.name, path.name):
                say(f"{spec.name}: pruning {stale.name}")
                stale.unlink()
            self.write_archive(storage_ref, tmp, ref, log)
            tmp.replace(path)
            image_id, archive = archive_image_id(path), str(path)
            # The archive must read back as an image (what `ctr images import` and `kind load` take).
            run(["skopeo", "inspect", "--raw", f"docker-archive:{path}"])
        self.prune_storage(ref, storage_id)
        entry = Entry(spec.name, digest, ref, image_id, storage_ref, archive)
        self.state[spec.name] = entry
        self.save()
        self.built.append(spec.name)
        size = self.image_size(storage_ref)
        if archive is not None:
            size += f" (archive {Path(archive).stat().st_size / 1e6:.0f} MB)"
        say(f"{spec.name}: built {ref} in {time.monotonic() - start:.0f} s, size {size}, id {image_id[:19]}")
        return entry

    def prune_storage(self, ref: str, keep_id: str) -> None:
        """Removes older builds of `ref`'s repository from buildah's storage (their layers go once no other
        image uses them), so rebuilding does not grow the storage without bound."""
        repo = ref.rsplit(":", 1)[0]
        for image in json.loads(self.buildah("images", "--json") or "[]"):
            names = image.get("names") or []
            mine = any(n.rsplit(":", 1)[0].endswith("/" + repo) for n in names)
            short = str(image["id"]).removeprefix("sha256:")
            if mine and not keep_id.removeprefix("sha256:").startswith(short):
                for n in names:
                    with contextlib.suppress(ImageBuildError):
                        self.buildah("rmi", n)

    def image_size(self, storage_ref: str) -> str:
        """The image's size as buildah's storage reports it (e.g. ``120 MB``: all layers, uncompressed)."""
        return str(json.loads(self.buildah("images", "--json", storage_ref))[0].get("size", "?"))

    def build_base(self, storage_ref: str, log: Path) -> None:
        recipe = BASE_RECIPE
        sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
        mirror = apt_mirror([p for p in sources if p.is_file() and p.suffix in (".list", ".sources")],
                            str(recipe["suite"]))
        work = self.cache / "work"
        work.mkdir(parents=True, exist_ok=True)
        rootfs = Path(tempfile.mkdtemp(prefix="base-rootfs-", dir=work))
        try:
            say(f"base: debootstrap --variant={recipe['variant']} {recipe['suite']} from {mirror}")
            include = ",".join(recipe["include"])  # type: ignore[arg-type]
            run(["debootstrap", f"--variant={recipe['variant']}", f"--include={include}",
                 str(recipe["suite"]), str(rootfs), mirror], log=log)
            for pattern in recipe["remove"]:  # type: ignore[attr-defined]
                for p in rootfs.glob(pattern):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
            ctr = self.buildah("from", "--quiet", "scratch").strip()
            try:
                mnt = self.buildah("mount", ctr).strip()
                # tar keeps owners, modes and hard links exactly as debootstrap made them.
                copy = f"tar -C '{rootfs}' -cf - . | tar -C '{mnt}' -xpf - --numeric-owner"
                run(["sh", "-c", copy], log=log)
                self.buildah("umount", ctr)
                self.buildah(
                    "config",
                    "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env", "LANG=C.UTF-8", "--cmd", "python3",
                    "--label", "org.opencontainers.image.description=Debian bookworm, python3, tini",
                    ctr,
                )  # fmt: skip
                self.buildah("commit", "--quiet", "--rm", ctr, storage_ref, log=log)
            except BaseException:
                subprocess.run(["buildah", "--root", str(self.cache / "storage"), "--runroot",
                                str(self.cache / "run"), "rm", ctr], capture_output=True, timeout=120)
                raise
        finally:
            shutil.rmtree(rootfs, ignore_errors=True)

    def build_etcd(self, storage_ref: str, log: Path) -> None:
        """A FROM-scratch image holding only /usr/local/bin/etcd: the SN Dockerfile copies it from there."""
        ctr = self.buildah("from", "--quiet", "scratch").strip()
        self.buildah("copy", "--chmod", "0755", ctr, str(self.etcd_binary()), "/usr/local/bin/etcd", log=log)
        self.buildah("commit", "--quiet", "--rm", ctr, storage_ref, log=log)

    def build_dockerfile(self, spec: ImageSpec, storage_ref: str, parent: Entry, log: Path) -> None:
        wheels = self.stage_wheels(spec)
        try:
            args = [
                "bud", "--pull=never", "--network", "none", *ULIMITS, "--layers=false",
                "-f", str(ROOT / (spec.dockerfile or "")), "-t", storage_ref,
                "-v", f"{wheels}:/wheels:ro",
                "--build-arg", f"BASE_IMAGE={self.ensure('base', in_storage=True).storage_ref}",
            ]  # fmt: skip
            if spec.parent == "torch-base":
                args += ["--build-arg", f"TORCH_BASE_IMAGE={parent.storage_ref}"]
            if spec.etcd:
                args += ["--build-arg", f"ETCD_IMAGE={self.ensure('etcd', in_storage=True).storage_ref}"]
            self.buildah(*args, str(ROOT), log=log)
        finally:
            shutil.rmtree(wheels, ignore_errors=True)

    def smoke(self, spec: ImageSpec, storage_ref: str, log: Path) -> None:
        """Starts each smoke command in a container of the image, as the pods' user; fails the build if one
        fails (the image stays out of images.json)."""
        if not spec.smoke:
            return
        ctr = self.buildah("from", "--quiet", "--pull=never", *ULIMITS, storage_ref).strip()
        try:
            for cmd in spec.smoke:
                user = "0:0" if spec.name == "base" else f"{NODE_UID}:{NODE_UID}"
                say(f"{spec.name}: smoke check `{' '.join(cmd)}`")
                try:
                    self.buildah("run", "--network", "none", "--user", user, ctr, "--", *cmd, log=log)
                except ImageBuildError as e:
                    raise ImageBuildError(f"{spec.name}: smoke check `{' '.join(cmd)}` failed: {e}") from e
        finally:
            self.buildah("rm", ctr)

    # ---------------------------------------------------------------------------------- wheelhouse

    @property
    def pool(self) -> Path:
        return self.cache / "wheels" / "pool"

    def pool_index(self) -> dict[tuple[str, str], Path]:
        self.pool.mkdir(parents=True, exist_ok=True)
        return {wheel_pin(p.name): p for p in self.pool.glob("*.whl")}

    def fetch_wheels(self, pins: Mapping[str, str]) -> dict[tuple[str, str], Path]:
        """The pool's wheel for every pin, downloading (or building, for sdist-only packages) the missing
        ones with `pip wheel --no-deps` (dependencies are pinned already)."""
        index = self.pool_index()
        missing = [f"{n}=={v}" for n, v in pins.items() if (n, v) not in index]
        if missing:
            say(f"wheelhouse: fetching {len(missing)} wheels into {self.pool}: {' '.join(missing)}")
            with tempfile.TemporaryDirectory(dir=self.pool.parent) as tmp:
                run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp, *missing],
                    log=self.log("wheels"))
                for w in Path(tmp).glob("*.whl"):
                    os.replace(w, self.pool / w.name)
            index = self.pool_index()
            still = [m for m in missing if tuple(m.split("==")) not in index]
            if still:
                raise ImageBuildError(f"pip made no wheel for {' '.join(still)} (log {self.log('wheels')})")
        return {(n, v): index[(n, v)] for n, v in pins.items()}

    def project_wheel(self) -> Path:
        """The project's wheel, built from a copy of its sources, once per sources hash."""
        out = self.cache / "wheels" / f"project-{self.sources_digest()[:16]}"
        found = sorted(out.glob("swarm_learning_k8s-*.whl")) if out.is_dir() else []
        if found:
            return found[0]
        say(f"wheelhouse: building the project's wheel into {out}")
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            (src / "node_images").mkdir(parents=True)
            for p in ("pyproject.toml", "README.md"):
                shutil.copy2(ROOT / p, src / p)
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / "operator", src / "operator", ignore=ignore)
            shutil.copytree(ROOT / "node_images" / "swarmlearning", src / "node_images" / "swarmlearning",
                            ignore=ignore)
            run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
                 str(Path(tmp) / "dist"), str(src)], log=self.log("wheels"))
            out.mkdir(parents=True, exist_ok=True)
            for old in out.parent.glob("project-*"):
                if old != out:
                    shutil.rmtree(old, ignore_errors=True)
            wheel = next((Path(tmp) / "dist").glob("swarm_learning_k8s-*.whl"))
            shutil.copy2(wheel, out / wheel.name)
            return out / wheel.name

    def stage_wheels(self, spec: ImageSpec) -> Path:
        """A folder with hard links to exactly this image's wheels and their pinned requirements.txt."""
        pins = self.pins(spec)
        wheels = self.fetch_wheels(pins)
        stage = Path(tempfile.mkdtemp(prefix=f"wheels-{spec.name}-", dir=self.cache / "wheels"))
        for path in wheels.values():
            os.link(path, stage / path.name)
        if spec.project:
            w = self.project_wheel()
            os.link(w, stage / w.name)
        (stage / "requirements.txt").write_text(
            "".join(f"{n}=={v}\n" for n, v in pins.items() if n != "pip")
        )
        stage.chmod(0o755)
        return stage


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Holds <cache>/.lock: concurrent runs would overwrite each other's state and archives."""
    with (cache / ".lock").open("w") as f:
        deadline = time.monotonic() + LOCK_TIMEOUT
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    say(f"another image build holds {cache / '.lock'}, waiting for it")
                    waiting = True
                if time.monotonic() > deadline:
                    raise ImageBuildError(
                        f"another image build held {cache / '.lock'} for more than {LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(1.0)
        yield


def chart_app_version() -> str:
    m = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', CHART.read_text(), re.M)
    if m is None:
        raise ImageBuildError(f"{CHART} has no appVersion: the images' tag comes from it")
    return m.group(1)


def check_python() -> None:
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    if ver != PYTHON or not sys.prefix.startswith(str(ROOT)):
        raise ImageBuildError(
            f"run this with the venv's Python {PYTHON} (.venv/bin/python; `make images` does): the wheels"
            f" are picked for the base image's Python {PYTHON} from the venv's versions; this is {ver}"
            f" at {sys.prefix}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="images", description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("what", nargs="?", choices=("build", "wheels"), default="build",
                    help="build: the images (default); wheels: only fill the wheelhouse")
    ap.add_argument("--only", nargs="+", choices=DEFAULT, metavar="NAME",
                    help=f"build only these images (and what they are built FROM): {', '.join(DEFAULT)}")
    ap.add_argument("--dry-run", action="store_true", help="only say what is out of date; build nothing")
    ap.add_argument("--force", action="store_true",
                    help="rebuild the images asked for even when their inputs are unchanged (what they are"
                    " built FROM is rebuilt only when out of date)")
    args = ap.parse_args(argv)
    start = time.monotonic()
    cache = Path(os.environ.get("SWARM_IMAGE_CACHE") or Path.home() / ".cache" / "swarm-learning" / "images")
    try:
        check_python()
        cache.mkdir(parents=True, exist_ok=True)
        wanted = tuple(args.only or DEFAULT)
        b = Builder(cache.resolve(), chart_app_version(), force=frozenset(wanted if args.force else ()),
                    dry_run=args.dry_run)
        with cache_lock(b.cache):
            if args.what == "wheels":
                for spec in SPECS.values():
                    if spec.requirements:
                        b.fetch_wheels(b.pins(spec))
                say(f"wheelhouse ready: {b.pool} and {b.project_wheel()}")
                return 0
            ensure_tools()
            b.load_state()
            try:
                for name in wanted:
                    b.ensure(name, in_storage=False)
            finally:
                # Working containers left by an interrupted run or by bud's stages; the lock says no other
                # run uses this storage.
                b.buildah("rm", "--all")
            if b.dry_run:
                say(f"dry run: {', '.join(b.built) or 'nothing'} out of date")
                return 0
            if b.built:
                # Images replaced by this run are untagged now: drop them so the storage does not grow.
                b.buildah("rmi", "--prune")
        done = f"built {', '.join(b.built)}" if b.built else "all images up to date, nothing built"
        say(f"{done} in {time.monotonic() - start:.1f} s; manifest {b.manifest_file}")
    except ImageBuildError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
