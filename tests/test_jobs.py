"""jobs/table1.py end to end on small IDX files through the local submitit backend."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]


def table1(*args):
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "table1.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_table1_variant_rows_carry_the_overrides(tmp_path, idx_dir):
    out = tmp_path / "t1"
    variant = tmp_path / "variant.yaml"  # rbd-hpc train's config files, with method tables
    variant.write_text("val_size: 64\nrbd:\n  dist: srht\n  compartments: layer\n  d: 30\n")
    proc = table1("--epochs", "1", "--models", "fc", "--methods", "rbd", "sgd",
                  "--data-dir", idx_dir, "--backend", "local", "--out", out,
                  "--config", variant, "--set", "rbd.d=20", "--label", "v")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out / "fc-rbd-v.h5", "r") as f:
        cfg = json.loads(f.attrs["config"])
        assert f["steps/coefficients"].shape[1] == 20
    assert (cfg["dist"], cfg["d"], cfg["compartments"], cfg["val_size"]) == ("srht", 20, "layer", 64)
    with h5py.File(out / "fc-sgd-v.h5", "r") as f:
        sgd = json.loads(f.attrs["config"])
    assert (sgd["dist"], sgd["val_size"]) == ("gaussian", 64)  # rbd.* touched only rbd
    rows = list(csv.DictReader(open(out / "results-v.csv")))
    assert [r["method"] for r in rows] == ["RBD-v", "SGD-v"]
    assert [float(r["paper"]) for r in rows] == [85.65, 87.32]
    assert all(float(r["epochs"]) == 1 for r in rows)
    assert "| FC-FMNIST | RBD-v | 1 |" in (out / "results-v.md").read_text()


def test_table1_hide_test_leaves_test_out_of_the_table_and_the_logs(tmp_path, idx_dir):
    """A variant still being chosen on validation: its table and its job's log hold no test
    accuracy, its metrics file does (for the variant validation chooses); without
    --hide-test the same cell's table has the test column."""
    tables = {}
    for label, flags in (("shown", []), ("hidden", ["--hide-test"])):
        out = tmp_path / label
        proc = table1("--epochs", "1", "--models", "fc", "--methods", "sgd", "--data-dir", idx_dir,
                      "--set", "val_size=64", "--backend", "local", "--out", out,
                      "--label", label, *flags)
        assert proc.returncode == 0, proc.stderr
        tables[label] = (out / f"results-{label}.md").read_text().splitlines()
        last = json.loads((out / f"fc-sgd-{label}.jsonl").read_text().splitlines()[-1])
        logs = "".join(p.read_text() for p in (out / "logs").glob("*.out"))
        assert f"val_acc {last['val_acc']:.4f}" in logs
        assert ("test_acc" in logs) == (label == "shown") and "test_acc" in last
        csv_head = (out / f"results-{label}.csv").read_text().splitlines()[0].split(",")
        assert csv_head == ["model", "method", "epochs", "val_acc"] + ["test_acc"] * (
            label == "shown") + ["paper", "ms_per_step"]
    shown, hidden = tables["shown"], tables["hidden"]
    assert shown[0] == ("| model | method | epochs | val acc (%) | test acc (%) | "
                        "paper, 100 epochs (%) | ms/step |") and shown[1] == "|" + "---|" * 7
    assert hidden[0] == shown[0].replace(" test acc (%) |", "") and hidden[1] == "|" + "---|" * 6
    shown_cells, hidden_cells = shown[2].split(" | "), hidden[2].split(" | ")
    assert hidden_cells[:4] == [c.replace("shown", "hidden") for c in shown_cells[:4]]
    assert hidden_cells[4] == shown_cells[5] == "87.32"  # the paper's figure


def test_table1_bad_set_is_one_line(tmp_path):
    for bad, fragment in [(["--set", "rbd.colour=red"], "'colour' is not a config field"),
                          (["--set", "adam.lr=1"], "method 'adam' is not one of nes, fpd, rbd, sgd"),
                          (["--set", "lr"], "is not [METHOD.]KEY=VALUE"),
                          (["--set", "rbd.dist=bernoulli"], "--dist 'bernoulli' is not valid"),
                          (["--config", tmp_path / "none.yaml"], "cannot read config file")]:
        proc = table1("--out", tmp_path / "t", "--backend", "local", *bad)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("table1: error:"), proc.stderr
        assert fragment in lines[0], lines[0]
        assert not list((tmp_path / "t").glob("*.h5"))


def test_job_scripts_refuse_counts_below_one_before_any_work():
    """The parsers took 0 or −1 and went on: scaling.py --ranks 0 hung in mpiexec -n 0,
    --configs fc ended on a KeyError; the others started work before failing, if they did."""
    for script, args, fragment in [
            ("scaling.py", ["--ranks", "0"], "argument --ranks: 0 must be a whole number ≥ 1"),
            ("scaling.py", ["--repeats", "-1"], "argument --repeats: -1 must be a whole number ≥ 1"),
            ("scaling.py", ["--configs", "fc"], "--configs 'fc' is not valid; choose from: fc:srht"),
            ("bench_ranks.py", ["--ranks", "1", "0"], "argument --ranks: 0 must be"),
            ("bench_ranks.py", ["--threads-total", "0"], "argument --threads-total: 0 must be"),
            ("train_ratio.py", ["--steps", "0"], "argument --steps: 0 must be"),
            ("train_ratio.py", ["--repeats", "0"], "argument --repeats: 0 must be"),
            ("sweep_d.py", ["--tasks", "0"], "argument --tasks: 0 must be"),
            ("sweep_d.py", ["--time-min", "0"], "argument --time-min: 0 must be"),
            ("table1.py", ["--nes-steps", "0"], "argument --nes-steps: 0 must be"),
            ("table1.py", ["--tasks", "x"], "argument --tasks: invalid integer 'x'")]:
        proc = subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (script, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"{script}: error: ") and fragment in last, (script, last)
