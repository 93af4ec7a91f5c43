"""rbd-hpc data: downloads in the standard formats, checked by MD5, from a loopback HTTP server
serving small files that the tests write (no internet here)."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import pickle
import tarfile
import threading

import pytest

from conftest import assert_user_error, make_idx_dir, run_cli, synthetic_images
from rbd_hpc.data import load_dataset


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def md5s(directory):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_idx_files_are_fetched_verified_and_loadable(server, tmp_path):
    www, url = server
    make_idx_dir(www, n_train=100, n_test=20, gz=True)
    table = tmp_path / "sums.json"
    table.write_text(json.dumps(md5s(www)))
    out = tmp_path / "mnist"
    proc = run_cli("data", "mnist", "--dir", out, "--url", url, "--checksums", table)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("downloaded, MD5 OK") == 4
    assert md5s(out) == md5s(www)
    data = load_dataset("mnist", str(out), seed=0, val_size=10)
    assert (len(data.train.y), len(data.val.y), len(data.test.y)) == (90, 10, 20)
    again = run_cli("data", "mnist", "--dir", out, "--url", url, "--checksums", table)
    assert again.stdout.count("present, MD5 OK") == 4  # nothing fetched twice


def test_cifar_archive_is_fetched_and_extracted(server, tmp_path):
    www, url = server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
            x, y = synthetic_images(8, 32, 3, i)
            blob = pickle.dumps({b"data": x.transpose(0, 3, 1, 2).reshape(8, 3072),
                                 b"labels": [int(v) for v in y]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (www / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    table = tmp_path / "sums.json"
    table.write_text(json.dumps(md5s(www)))
    out = tmp_path / "cifar"
    proc = run_cli("data", "cifar10", "--dir", out, "--url", url, "--checksums", table)
    assert proc.returncode == 0, proc.stderr
    data = load_dataset("cifar10", str(out), seed=0, val_size=4)
    assert data.train.x.shape == (36, 32, 32, 3) and len(data.test.y) == 8


def test_a_checksum_mismatch_keeps_nothing(server, tmp_path):
    www, url = server
    make_idx_dir(www, n_train=50, n_test=10, gz=True)
    out = tmp_path / "fmnist"  # the built-in table: the real files' MD5s, not these
    proc = run_cli("data", "fmnist", "--dir", out, "--url", url)
    assert_user_error(proc, "does not match the published 8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                      "nothing was kept")
    assert list(out.iterdir()) == []


def test_bad_requests_are_one_line(server, tmp_path):
    www, url = server
    assert_user_error(run_cli("data", "imagenet", "--dir", tmp_path), "data set 'imagenet' is not "
                      "valid; choose one of: mnist, fmnist, cifar10")
    proc = run_cli("data", "mnist", "--dir", tmp_path / "m", "--url", url)  # nothing served
    assert_user_error(proc, "cannot download", "train-images-idx3-ubyte.gz")
    assert not any((tmp_path / "m").iterdir())
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    assert_user_error(run_cli("data", "mnist", "--dir", tmp_path, "--checksums", bad),
                      "must map file names to MD5 strings")

