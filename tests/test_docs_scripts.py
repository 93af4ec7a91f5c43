"""The scripts whose output docs/results.md quotes still run on today's package.

They are not part of the package, so nothing else would notice an API they use changing
(layer_rates.py and pass_batch.py once called ``Anchor`` with an argument it had lost)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, needs_fmnist, run_cli

pytestmark = pytest.mark.timeout(600)
TINY = ["--val-size", "64", "--batch-size", "32", "--threads", "1", "--no-progress"]
CNN = ["conv1", "conv2", "conv3", "fc1", "fc2"]


def script(name: str, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def cnn_run(idx_dir, tmp_path_factory):
    """A tiny CNN RBD run with SVRG anchors and the dense layer fc1 at twice the rate."""
    out = tmp_path_factory.mktemp("docs") / "cnn.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--model", "cnn", "--dist", "srht",
                   "--compartments", "layer", "--allocate", "equal", "--d", "50", "--lr", "0.2",
                   "--svrg-every", "8", "--lr-scale", "fc1=2", "--steps", "12",
                   "--snapshot-every", "6", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_layer_rates_prints_each_compartments_best_rate_against_its_own(cnn_run):
    lines = script("layer_rates.py", cnn_run, 6).stdout.splitlines()
    assert lines[0] == "step 6 (rate 0.2, svrg):"
    assert [line.split()[0] for line in lines[1:]] == CNN
    row = re.compile(r"  (\w+) +D= *\d+ d= 10  A=\S+  B=\S+  η\*=\S+ \(\S+× the rate(.*)\)")
    own = [row.fullmatch(line).group(2) for line in lines[1:]]
    assert own == ["", "", "", " 0.4, --lr-scale 2", ""]


def test_loss_clip_scores_a_run_file(cnn_run):
    out = script("loss_clip.py", cnn_run).stdout
    assert re.search(r"train loss \d\.\d+; p_y < 1e-7: \d+; p_y > 1-1e-7: \d+", out), out


def test_tail_average_scores_the_mean_of_the_snapshots_in_each_window(idx_dir, tmp_path):
    """640 - 64 images in batches of 32: 18 steps an epoch. Snapshots of θ at steps 0 and 40
    only, so the last 2 epochs (steps 5-40) hold the last snapshot alone, which must score as
    the last weights do, and every longer window holds both."""
    run = tmp_path / "fc.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "40",
                   "--snapshot-every", "1000", "--out", run)
    assert proc.returncode == 0, proc.stderr
    lines = script("tail_average.py", run).stdout.splitlines()
    scores = [line.split(": ")[-1] for line in lines]
    evaluated = json.loads(run_cli("eval", run, "--json").stdout)
    assert scores[0] == (f"val loss {evaluated['val_loss']:.4f}, "
                         f"val acc {100 * evaluated['val_acc']:.2f}%")
    assert all(re.fullmatch(r"val loss \d\.\d{4}, val acc \d+\.\d\d%", s) for s in scores)
    assert [line.split(" of the last ")[0] for line in lines[1:]] == (
        ["  mean of the snapshot"] + ["  mean of the 2 snapshots"] * 4)
    assert scores[1] == scores[0]
    assert scores[2] != scores[0] and scores[2:] == [scores[2]] * 4


def test_pass_batch_times_an_anchor_pass():
    out = script("pass_batch.py", "1000").stdout
    assert re.fullmatch(r"batch  1000: \d+\.\d{3} ms an image\n", out), out


@needs_fmnist()
def test_gradient_share_compares_two_bases_at_three_snapshots(idx_dir, tmp_path):
    run = tmp_path / "fc.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--dist", "srht", "--compartments",
                   "layer", "--steps", "12", "--snapshot-every", "2", "--out", run)
    assert proc.returncode == 0, proc.stderr
    lines = script("gradient_share.py", run).stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 10", "step 12"]
    assert all("share of ‖g_fc1‖² in 125 directions: srht 0." in line for line in lines)


def test_keras_sgd_refuses_in_one_line_where_tensorflow_is_missing_or_out_exists(tmp_path):
    """keras_sgd.py needs TensorFlow, which the project's environment does not hold: it says so
    in one line (no traceback) and writes nothing; an existing OUT is refused, not overwritten."""
    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed here")
    except ImportError:
        pass
    cmd = [sys.executable, str(ROOT / "docs" / "keras_sgd.py")]
    out = tmp_path / "k.jsonl"
    proc = subprocess.run([*cmd, out, "--epochs", "1"], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (
        1, "keras_sgd.py: needs TensorFlow (pip install tensorflow-cpu), which is not installed "
           "here\n")
    assert not out.exists()
    out.write_text("kept\n")
    proc = subprocess.run([*cmd, out], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"keras_sgd.py: error: {out} exists; choose another "
                                            "OUT (nothing is overwritten)")
    assert out.read_text() == "kept\n"
    proc = subprocess.run([*cmd, tmp_path / "nope" / "k.jsonl"], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (
        1, f"keras_sgd.py: output directory {tmp_path / 'nope'} does not exist\n")


def load_doc_script(name: str):
    import importlib.util
    if str(ROOT / "docs") not in sys.path:  # as when run: the script's own directory first
        sys.path.insert(0, str(ROOT / "docs"))
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / "docs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tf_rbd_step_moves_torch_parameters_into_keras_layout_and_back():
    """tf_rbd_step.py hands θ and every direction to TensorFlow in Keras' layout: a conv kernel
    as (kh, kw, in, out), a dense kernel as (in, out), and fc1's rows in the order Keras'
    Flatten reads a channel-last feature map; the inverse gives back torch's flat vector."""
    import numpy as np
    import torch
    t = load_doc_script("tf_rbd_step.py")
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    k = t.to_keras("conv2.weight", conv.shape, conv.reshape(1, -1))[0].reshape(3, 3, 32, 64)
    assert k[2, 1, 5, 7] == conv[7, 5, 2, 1] and k[0, 2, 31, 63] == conv[63, 31, 0, 2]
    fc1 = rng.standard_normal((64, 64 * 3 * 3)).astype(np.float32)
    k1 = t.to_keras("fc1.weight", fc1.shape, fc1.reshape(1, -1))[0].reshape(576, 64)
    fmap = rng.standard_normal((64, 3, 3)).astype(np.float32)         # torch's (C, H, W)
    torch_out = torch.from_numpy(fc1) @ torch.from_numpy(fmap).flatten()
    keras_out = torch.from_numpy(fmap.transpose(1, 2, 0).reshape(-1)) @ torch.from_numpy(k1)
    assert torch.allclose(torch_out, keras_out, rtol=1e-5, atol=1e-5)
    fc2 = rng.standard_normal((10, 64)).astype(np.float32)
    assert np.array_equal(t.to_keras("fc2.weight", fc2.shape, fc2.reshape(1, -1))[0]
                          .reshape(64, 10), fc2.T)
    for name, w in [("conv2.weight", conv), ("fc1.weight", fc1), ("fc2.weight", fc2),
                    ("fc2.bias", fc2[0])]:
        keras = t.to_keras(name, w.shape, w.reshape(1, -1))[0].reshape(t.keras_shape(w.shape))
        assert np.array_equal(t.to_keras_inverse(keras, name, w.shape), w.reshape(-1)), name


def test_tf_rbd_step_refuses_in_one_line_where_tensorflow_is_missing():
    try:
        import tensorflow  # noqa: F401
        pytest.skip("TensorFlow is installed here")
    except ImportError:
        pass
    cmd = [sys.executable, str(ROOT / "docs" / "tf_rbd_step.py")]
    proc = subprocess.run([*cmd, "--steps", "1"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1, "", "tf_rbd_step.py: needs TensorFlow (pip install tensorflow-cpu), which is not "
               "installed here\n")
    proc = subprocess.run([*cmd, "--steps", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == ("tf_rbd_step.py: error: --steps 0, --every 100 and "
                                            "--threads 1 must be positive")
