"""Write a single-layer image as a docker-archive tarball (what `docker save` writes, `ctr images import`
reads), from files or a root filesystem directory. Standard library only: build.sh runs it with the
system python3 to pack the pause image before any venv exists.

    python3 tests/testbed/image_archive.py --ref swarmlearning/pause:testbed-1 \\
        --file /pause=./pause --entrypoint /pause -o pause.tar
    python3 tests/testbed/image_archive.py --ref local/base:1 --rootfs ./rootfs --cmd /bin/sh -o base.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _layer_tar(files: dict[str, Path], rootfs: Path | None, out: Path) -> None:
    """A reproducible layer: fixed mtimes and owners, entries in sorted order."""

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        if rootfs is not None:
            for entry in sorted(os.listdir(rootfs)):
                tar.add(rootfs / entry, arcname=entry, filter=normalize)
        for dest, src in sorted(files.items()):
            info = normalize(tar.gettarinfo(str(src), arcname=dest.lstrip("/")))
            with src.open("rb") as f:
                tar.addfile(info, f)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_docker_archive(
    out: Path,
    ref: str,
    *,
    files: dict[str, Path] | None = None,
    rootfs: Path | None = None,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
) -> str:
    """Write ``out`` holding image ``ref`` (``name:tag``, no registry host); return its id
    (``sha256:<config digest>``, what the container runtime reports as the image id).

    ``files`` maps absolute paths in the image to files on this machine; ``rootfs`` adds a whole directory
    tree as the image's root. The archive is written next to ``out`` and renamed into place.
    """
    if not files and rootfs is None:
        raise ValueError("write_docker_archive: give files or rootfs (an image needs content)")
    if ":" not in ref.rsplit("/", 1)[-1]:
        raise ValueError(f"ref must be name:tag, got {ref!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".image-") as tmp:
        layer = Path(tmp) / "layer.tar"
        _layer_tar(dict(files or {}), rootfs, layer)
        diff_id = _sha256(layer)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": list(env), "Entrypoint": list(entrypoint) or None, "Cmd": list(cmd) or None},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created_by": "tests/testbed/image_archive.py"}],
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_digest = hashlib.sha256(config_bytes).hexdigest()
        manifest = [
            {"Config": f"{config_digest}.json", "RepoTags": [ref], "Layers": [f"{diff_id}/layer.tar"]}
        ]
        partial = Path(tmp) / "image.tar"
        with tarfile.open(partial, "w") as tar:

            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

            add_bytes(f"{config_digest}.json", config_bytes)
            tar.add(layer, arcname=f"{diff_id}/layer.tar")
            add_bytes("manifest.json", json.dumps(manifest).encode())
        partial.replace(out)
    return f"sha256:{config_digest}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", required=True, help="image name:tag (no registry host)")
    parser.add_argument("--file", action="append", default=[], metavar="DEST=SRC", help="add one file")
    parser.add_argument("--rootfs", type=Path, help="add a directory tree as the image root")
    parser.add_argument("--entrypoint", nargs="*", default=[])
    parser.add_argument("--cmd", nargs="*", default=[])
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    files = {}
    for item in args.file:
        dest, sep, src = item.partition("=")
        if not sep or not dest.startswith("/"):
            parser.error(f"--file must be /DEST=SRC, got {item!r}")
        files[dest] = Path(src)
    image_id = write_docker_archive(
        args.output, args.ref, files=files, rootfs=args.rootfs, entrypoint=args.entrypoint, cmd=args.cmd
    )
    print(image_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
