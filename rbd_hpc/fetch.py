"""``rbd-hpc data NAME --dir DIR``: download a data set in its standard format, verified.

Every file is checked against its published MD5 (the checksums torchvision uses) before it
is moved into place; a download that fails or does not match leaves nothing behind, and a
file already present with the right checksum is not fetched again. ``--url`` points at a
mirror (the same file names under another base URL) and ``--checksums FILE.json`` replaces
the table for a mirror of other files. Fashion-MNIST is also a Debian package
(``dataset-fashion-mnist``), which rbd-hpc reads by default.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import UserError, make_directory, require_choice

SOURCES = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fmnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/", {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}),
}
_CHUNK = 1 << 20


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, target: Path, expected: str) -> None:
    """``url`` → ``target`` through a temporary name, kept only when its MD5 is ``expected``."""
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f, _CHUNK)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise UserError(f"cannot download {url}: {reason}") from None
    got = md5(part)
    if got != expected:
        part.unlink()
        raise UserError(f"{url}: MD5 {got} does not match the published {expected}; nothing "
                        "was kept (a corrupt transfer or a different file at that address)")
    os.replace(part, target)


def _checksums(path: str | None, default: dict) -> dict:
    if path is None:
        return default
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read --checksums {path}: {e}") from None
    if not (isinstance(table, dict) and table and all(
            isinstance(k, str) and isinstance(v, str) for k, v in table.items())):
        raise UserError(f"--checksums {path} must map file names to MD5 strings")
    return table


def fetch(name: str, directory: str, url: str | None = None,
          checksums: str | None = None) -> list[str]:
    """Download data set ``name`` into ``directory``; returns one report line per file."""
    require_choice("data set", name, tuple(SOURCES))
    base, default = SOURCES[name]
    base = url or base
    if not base.endswith("/"):
        base += "/"
    files = _checksums(checksums, default)
    out = make_directory(directory, "--dir")
    lines = []
    for file, expected in files.items():
        target = out / file
        if target.is_file() and md5(target) == expected:
            lines.append(f"{target}: present, MD5 OK")
            continue
        _download(base + file, target, expected)
        lines.append(f"{target}: downloaded, MD5 OK")
        if file.endswith(".tar.gz"):
            _extract(target, out)
            lines.append(f"{target}: extracted into {out}")
    return lines


def _extract(archive: Path, out: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")  # refuses absolute paths, links out, devices
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"cannot extract {archive}: {e}") from None
