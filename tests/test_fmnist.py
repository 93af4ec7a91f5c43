"""Real Fashion-MNIST: RBD learns in a few hundred steps."""
import json


from conftest import needs_fmnist, run_cli


@needs_fmnist()
def test_rbd_learns_on_real_fashion_mnist(tmp_path):
    metrics = tmp_path / "m.jsonl"
    proc = run_cli("train", "--preset", "fc-fmnist", "--method", "rbd", "--steps", "300",
                   "--dist", "srht", "--metrics", metrics, "--no-progress", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["test_acc"] > 0.45, last  # chance is 0.10
    assert last["val_acc"] > 0.45, last
