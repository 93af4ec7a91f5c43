"""The command line: bad input is one line and exit 2; a tiny run end to end."""
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import assert_user_error, final_theta, make_idx_dir, run_cli
from rbd_hpc.config import TrainConfig


@pytest.mark.parametrize("args,fragments", [
    (["--preset", "vgg-imagenet"], ["--preset 'vgg-imagenet'", "fc-fmnist"]),
    (["--method", "adam"], ["--method 'adam'", "rbd, fpd, nes, sgd, rigl, set, static"]),
    (["--dist", "bernoulli"], ["--dist 'bernoulli'", "gaussian, rademacher, uniform, srht"]),
    (["--d", "0"], ["--d 0 must be a positive"]),
    (["--d", "-5"], ["--d -5"]),
    (["--d", "200000"], ["--d 200000 exceeds the number of parameters (101770)"]),
    (["--d-per-compartment", "2000", "--compartments", "layer"], ["larger than compartment 'fc2'"]),
    (["--compartments", "rows"], ["--compartments 'rows'", "network, layer, tensor, block:N"]),
    (["--allocate", "even"], ["--allocate 'even'", "size, sqrt, equal, power:P"]),
    (["--allocate", "power:half"], ["--allocate 'power:half': P must be a finite number"]),
    (["--mode", "both"], ["--mode 'both'", "shared, per-rank"]),
    (["--d", "ten"], ["invalid integer 'ten'"]),
    (["--lr", "-1"], ["--lr -1.0 must be a positive"]),
    (["--epochs", "0"], ["--epochs 0 must be a positive"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
    (["--device", "cuda"], ["no CUDA device"]),
    (["--method", "nes", "--momentum", "0.9"],
     ["--momentum 0.9 applies to rbd, fpd, sgd, rigl, set and static only, not to --method nes"]),
    (["--momentum", "1"], ["--momentum 1.0 must be in [0, 1)"]),
    (["--dist", "smooth:0"], ["--dist 'smooth:0': σ must be a number of pixels in (0, 16]"]),
    (["--dist", "smooth:2"], ["--dist smooth:2 gives smooth directions to a fully connected first layer",
                              "here fc, --compartments network"]),
    (["--preset", "cnn-fmnist", "--dist", "smooth:2", "--compartments", "layer"],
     ["--dist smooth:2", "here cnn, --compartments layer"]),
    (["--weight-decay", "-0.1"], ["--weight-decay -0.1 must be a finite number ≥ 0"]),
    (["--weight-decay", "nan"], ["--weight-decay nan must be a finite number ≥ 0"]),
    (["--weight-decay", "4", "--lr", "0.5"],
     ["--weight-decay 4.0 with --lr 0.5 scales θ by 1 − ηλ = -1 per step; ηλ must be below 1"]),
    (["--lr-min", "0.1"], ["--lr-min 0.1 is the floor of --schedule cosine; --schedule constant has none"]),
    (["--schedule", "cosine", "--lr", "0.2", "--lr-min", "0.2"],
     ["--lr-min 0.2 must be a finite number below --lr 0.2"]),
    (["--schedule", "cosine", "--lr-min", "-0.1"], ["--lr-min -0.1 must be a finite number ≥ 0"]),
    (["--schedule", "cosine", "--lr-min", "inf"], ["--lr-min inf must be a finite number ≥ 0"]),
    (["--lr-scale", "fc1"], ["--lr-scale 'fc1': 'fc1' must be NAME=X with X a positive finite number"]),
    (["--lr-scale", "fc1=0"], ["--lr-scale 'fc1=0': 'fc1=0' must be NAME=X"]),
    (["--lr-scale", "fc1=2,=3"], ["--lr-scale 'fc1=2,=3': '=3' must be NAME=X"]),
    (["--lr-scale", "fc1=nan"], ["'fc1=nan' must be NAME=X with X a positive finite number"]),
    (["--lr-scale", "fc1=2,fc1=3"], ["--lr-scale 'fc1=2,fc1=3' names compartment 'fc1' twice"]),
    (["--lr-scale", "fc1=1e30", "--lr", "2"], ["--lr-scale fc1=1e30 with --lr 2 gives a rate above 1e+30"]),
    (["--method", "sgd", "--lr-scale", "fc1=2"],
     ["--lr-scale fc1=2 scales the steps of rbd's compartments, not of --method sgd"]),
    (["--compartments", "layer", "--lr-scale", "fc9=2"],
     ["--lr-scale names 'fc9', which is not a compartment of this run; its compartments are "
      "fc1, fc2"]),
])
def test_bad_train_arguments(args, fragments, idx_dir):
    assert_user_error(run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--steps", "1", *args), *fragments)


def test_missing_data(tmp_path):
    proc = run_cli("train", "--data-dir", tmp_path / "nowhere", "--steps", "1")
    assert_user_error(proc, "data directory", "nowhere", "does not exist")
    d = make_idx_dir(tmp_path / "partial", n_train=20, n_test=5)
    os.remove(d / "train-labels-idx1-ubyte.gz")
    assert_user_error(run_cli("train", "--data-dir", d, "--steps", "1"),
                      "missing data file train-labels-idx1-ubyte", str(d))


def test_cifar_preset_without_data_dir():
    proc = run_cli("train", "--preset", "cnn-cifar10", "--steps", "1", env={"RBD_DATA": ""})
    assert_user_error(proc, "no default location", "--data-dir")


def test_unwritable_output_keeps_nothing_half_written(tmp_path, idx_dir):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: use a missing directory
            target = tmp_path / "missing" / "run.h5"
            assert_user_error(run_cli("train", "--data-dir", idx_dir, "--steps", "1", "--out", target),
                              "output directory", "does not exist")
        else:
            assert_user_error(run_cli("train", "--data-dir", idx_dir, "--steps", "1", "--out",
                                      locked / "run.h5"), "not writable")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_is_one_line_even_for_root(tmp_path, idx_dir):
    """/proc passes the permission check for root but creates no file: the run lock's create
    failed with a traceback; now one line naming the lock file, and no metrics written."""
    metrics = tmp_path / "m.jsonl"
    assert_user_error(run_cli("train", "--data-dir", idx_dir, "--steps", "1", "--out",
                              "/proc/rbd-hpc-run.h5", "--metrics", metrics),
                      "cannot create the lock file /proc/rbd-hpc-run.h5.lock")
    assert not metrics.exists()


def test_a_part_epoch_reads_the_same_in_both_halves_of_the_epoch_line(tmp_path, idx_dir):
    """1 step of 18 is 0.05556 epochs: the line read the metrics row's 4-decimal rounding
    (0.0556) on the left and the exact value on the right."""
    proc = run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--steps", "1", "--d", "20",
                   "--out", tmp_path / "run.h5", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("epoch 0.05556/0.05556 step 1/1: "), proc.stdout


def test_hide_test_prints_no_test_score_and_changes_nothing_else(tmp_path, idx_dir):
    """--hide-test is for tuning on validation: the epoch lines and the last line lose their
    test score, while the trajectory and the metrics file (test scores included, for the
    setting validation chooses) are those of the same run without it."""
    outputs = {}
    for name, flags in (("shown", []), ("hidden", ["--hide-test"])):
        metrics = tmp_path / f"{name}.jsonl"
        proc = run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--epochs", "2",
                       "--d", "20", "--out", tmp_path / f"{name}.h5", "--metrics", metrics,
                       "--no-progress", *flags)
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        outputs[name] = proc.stdout.strip().splitlines(), rows
    (shown, shown_rows), (hidden, hidden_rows) = outputs["shown"], outputs["hidden"]
    assert "test" not in "".join(hidden).replace(str(tmp_path), "")
    assert len(hidden) == len(shown) == 3
    for a, b, row in zip(hidden[:2], shown[:2], hidden_rows):
        scores = f"train_loss {row['train_loss']:.4f} val_acc {row['val_acc']:.4f}"
        assert a.split(", ")[0].endswith(scores)
        assert b.split(", ")[0].endswith(f"{scores} test_acc {row['test_acc']:.4f}")
    assert f"steps, val_acc {hidden_rows[-1]['val_acc']:.4f}, " in hidden[-1]
    timing = {"ms_per_step", "ms_forward_backward", "ms_method", "ms_exchange",
              "ms_bookkeeping"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in hidden_rows] == \
        [{k: v for k, v in r.items() if k not in timing} for r in shown_rows]
    assert "test_acc" in hidden_rows[-1]
    assert np.array_equal(final_theta(tmp_path / "hidden.h5"), final_theta(tmp_path / "shown.h5"))


def test_tiny_run_end_to_end(tmp_path, idx_dir):
    out, metrics = tmp_path / "run.h5", tmp_path / "m.jsonl"
    proc = run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--epochs", "2", "--d", "20",
                   "--batch-size", "32", "--out", out, "--metrics", metrics, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    *epochs, summary = proc.stdout.strip().splitlines()
    assert "test_acc" in summary and proc.stderr == ""  # --no-progress: no bar, no lines
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [e.split(":")[0] for e in epochs] == ["epoch 1/2 step 18/36", "epoch 2/2 step 36/36"]
    assert f"val_acc {rows[0]['val_acc']:.4f} test_acc {rows[0]['test_acc']:.4f}" in epochs[0]
    assert "ETA" in epochs[0] and "ETA" not in epochs[1]  # none left to estimate at the end
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"val_loss", "val_acc", "test_loss", "test_acc", "ms_per_step", "cos_grad",
            "bytes_per_step"} <= set(rows[0])
    assert rows[-1]["bytes_per_step"] == 4 * 20  # d floats per step, single process
    assert (rows[-1]["recv_bytes_per_step"], rows[-1]["calls_per_step"]) == (0, 1)
    # where the step's time went: the phases add up to the step (less the batch-free slack)
    phases = [rows[-1][f"ms_{p}"] for p in ("forward_backward", "method", "exchange")]
    assert rows[-1]["ms_exchange"] == 0 and min(phases[:2]) > 0  # no MPI in one process
    assert sum(phases) <= rows[-1]["ms_per_step"] * 1.5 and rows[-1]["ms_bookkeeping"] >= 0
    assert 0 < rows[-1]["cos_grad"] < 1
    with h5py.File(out, "r") as f:
        assert f["steps/coefficients"].shape == (36, 20)
        assert int(f["commit"][0]) == 36
    before = out.read_bytes()
    # the same command again would throw the run away: refused, the file untouched
    again = ["train", "--data-dir", idx_dir, "--val-size", "64", "--steps", "3", "--d", "20",
             "--out", out, "--no-progress"]
    assert_user_error(run_cli(*again), f"run file {out} already exists (36 steps committed)",
                      f"--resume {out}", "--overwrite")
    assert out.read_bytes() == before
    proc = run_cli(*again, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        assert int(f["commit"][0]) == 3


def test_the_eta_leaves_evaluations_out_of_the_step_rate_and_adds_those_still_ahead(monkeypatch):
    """A resume's first epoch line came from a window of a few steps plus one evaluation, which
    the old estimate spread over every step left (4 h shown for a 1.5 h remainder)."""
    import rbd_hpc.progress as progress
    from rbd_hpc.recorder import anchors_after, evaluations_after
    assert [evaluations_after(d, 100, 10) for d in (0, 5, 10, 95, 100)] == [10, 10, 9, 1, 0]
    assert [evaluations_after(d, 105, 10) for d in (0, 100, 104, 105)] == [11, 1, 1, 0]
    # SVRG anchor passes, taken before steps 0, 10, 20, …: those still ahead after `done` steps
    assert [anchors_after(d, 100, 10) for d in (0, 1, 10, 11, 91, 100)] == [10, 9, 9, 8, 0, 0]
    assert [anchors_after(d, 105, 10) for d in (0, 100, 101)] == [11, 1, 0]
    assert anchors_after(0, 100, 0) == 0  # no SVRG, no pass
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    bar = progress.StepProgress(1000, "t", enabled=False, initial=400,
                                pending=lambda done: 9.0 * evaluations_after(done, 1000, 100))
    assert bar.eta() is None  # no step taken yet
    now[0] += 1.0             # 100 steps in 1 s (10 ms each) ...
    bar.update(500)
    now[0] += 9.0             # ... then an evaluation of 9 s
    bar.aside(9.0)
    assert bar.eta() == pytest.approx(500 * 0.01 + 5 * 9.0)  # not 500 × 0.1 s
    plain = progress.StepProgress(10, "t", enabled=False)  # no evaluations: the plain rate
    now[0] += 2.0
    plain.update(4)
    assert plain.eta() == pytest.approx(6 * 0.5)


def test_bench_prints_ratios():
    proc = run_cli("bench", "--model", "fc", "--d", "20", "--steps", "3", "--dist", "gaussian,srht")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    names = [line.split()[0] for line in lines[2:6]]
    assert names == ["sgd", "rbd-gaussian", "rbd-srht", "rbd-reference"]
    assert float(lines[2].split()[-2]) == 1.0   # SGD ÷ SGD
    assert float(lines[5].split()[-1]) == 1.0   # reference ÷ reference
    # Ratios are of the medians printed in the same run (speed itself is not asserted: a loaded
    # machine can reorder the configurations). Medians are printed to 3 decimals and ratios to 2, so each ratio must lie in the interval
    # the rounded medians allow, widened by the ratio's own rounding.
    ms = {line.split()[0]: float(line.split()[1]) for line in lines[2:6]}
    h_ms, h_ratio = 0.0005 + 1e-12, 0.005 + 1e-12

    def consistent(ratio: float, num: float, den: float) -> bool:
        low, high = (num - h_ms) / (den + h_ms), (num + h_ms) / (den - h_ms)
        return low - h_ratio <= ratio <= high + h_ratio

    for line in lines[2:6]:
        name, _, over_sgd, over_ref = line.split()
        assert consistent(float(over_sgd), ms[name], ms["sgd"]), line
        assert consistent(float(over_ref), ms[name], ms["rbd-reference"]), line
        assert not consistent(float(over_sgd) + 0.5, ms[name], ms["sgd"])


def test_bench_ceilings_and_kernels_show_what_a_step_is_made_of():
    proc = run_cli("bench", "--model", "fc", "--d", "20", "--steps", "2", "--dist", "gaussian,srht",
                   "--no-reference", "--ceilings", "--kernels")
    assert proc.returncode == 0, proc.stderr
    rows = [re.split(r"\s{2,}", line)[0] for line in proc.stdout.splitlines()[2:9]]
    assert rows == ["sgd", "rbd-gaussian", "rbd-gaussian: directions only",
                    "rbd-gaussian: sampling only", "rbd-srht", "rbd-srht: directions only",
                    "rbd-srht: signs+rows+2 fwht"]
    kernels = proc.stdout.split("# kernels alone")[1].splitlines()[1:10]
    names = [re.split(r"\s{2,}", line)[0] for line in kernels]
    assert names[2] == "fwht 2^17, fht_cpu (AVX butterflies)"
    assert names[5:] == ["normals, Philox+ziggurat (gen. 2)", "normals, torch.randn (gen. 1)",
                         "sum of 50 directions, in order (gen. 3)",
                         "sum of 50 directions, BLAS (gen. 1, 2)"]
    assert all(float(line.split()[-1]) > 0 for line in kernels)


def test_bench_fpd_times_the_official_step_against_lis():
    proc = run_cli("bench", "--model", "fc", "--d", "20", "--steps", "3", "--dist", "gaussian,srht",
                   "--no-reference", "--fpd")
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^(fpd-\w+) +li ([\d.]+) ms +official ([\d.]+) ms +ratio ([\d.]+) +"
                      r"regenerated ([\d.]+) ms +ratio ([\d.]+)$",
                      proc.stdout.split("# the official FPD's step")[1], re.M)
    assert [r[0] for r in rows] == ["fpd-gaussian", "fpd-srht"]
    for _, li, official, ratio, regenerated, ratio2 in rows:  # ratios of the medians printed
        li, official, ratio, regenerated, ratio2 = map(float, (li, official, ratio, regenerated, ratio2))
        for num, r in ((official, ratio), (regenerated, ratio2)):
            assert (num - 0.005) / (li + 0.005) - 0.005 <= r <= (num + 0.005) / (li - 0.005) + 0.005


def test_bench_unfused_times_the_adds_each_step_makes():
    """One row per configuration (SGD once): the adds its step makes, from the method's own
    chunk plan (d = 20 in chunks of 8: three dense chunks over all of θ; srht's one transform;
    layer compartments: fc1's chunks and fc2's), both ways, and the extra ÷ the step."""
    proc = run_cli("bench", "--model", "fc", "--d", "20", "--chunk", "8", "--steps", "2",
                   "--dist", "gaussian,srht", "--compartments", "network,layer", "--no-reference",
                   "--unfused")
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^(\S+) +(\d+) adds over +([\d,]+) elements  fused ([\d.]+) ms  unfused "
                      r"([\d.]+) ms  step ([\d.]+) ms  extra ÷ step ([+-][\d.]+)%$",
                      proc.stdout.split("# the scaled adds of one step")[1], re.M)
    assert [(r[0], int(r[1]), r[2]) for r in rows] == [
        ("sgd", 1, "101,770"), ("rbd-gaussian", 3, "305,310"), ("rbd-srht", 1, "101,770"),
        ("rbd-gaussian@layer", 4, "302,730"), ("rbd-srht@layer", 2, "101,770")]
    for *_, fused, unfused, step, share in rows:  # the share is of the medians printed
        fused, unfused, step, share = map(float, (fused, unfused, step, share))
        assert fused > 0 and unfused > 0 and step > 0
        # every ratio the printed roundings allow (medians ± 0.0005 ms, step ± 0.005 ms)
        corners = [(unfused - fused + e) / (step + s)
                   for e in (-0.001, 0.001) for s in (-0.005, 0.005)]
        assert min(corners) - 0.00005 <= share / 100 <= max(corners) + 0.00005


@pytest.mark.parametrize("args,fragment", [
    (["--dist", "normal"], "--dist 'normal'"),
    (["--steps", "0"], "--steps 0 must be a positive number"),  # was a StatisticsError
    (["--d", "0"], "--d 0 must be a positive number"),
    (["--threads", "0"], "--threads 0 must be a positive number"),
    (["--chunk", "-1"], "--chunk -1 must be a positive number"),
])
def test_bench_bad_arguments(args, fragment):
    assert_user_error(run_cli("bench", *args), fragment)


def test_plot_writes_pngs(tmp_path, idx_dir):
    from rbd_hpc.plot import accuracy_against_d, load_runs

    variants = {"sgd": ["--method", "sgd"], "rbd20": ["--d", "20"], "rbd40": ["--d", "40"],
                "rbd20-lr1": ["--d", "20", "--lr", "1"],
                "rbd-layer10": ["--compartments", "layer", "--d-per-compartment", "10"]}
    runs = []
    for name, args in variants.items():
        out = tmp_path / f"{name}.h5"
        proc = run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--epochs", "2", *args,
                       "--out", out, "--no-progress")
        assert proc.returncode == 0, proc.stderr
        runs.append(out)
    proc = run_cli("plot", *runs, "--out", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    for name in ("curves.png", "val_acc_vs_epoch.png", "acc_vs_d.png", "cost_per_step.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    # one line per set of runs differing only in d; x is the directions actually used per step
    # (the layer run has --d 250 in its config but 2 compartments × 10 directions)
    loaded = load_runs(runs)
    acc = {name: 100 * r["rows"][-1]["test_acc"] for name, r in zip(variants, loaded)}
    groups = accuracy_against_d(loaded)
    lr = loaded[1]["config"]["lr"]
    assert lr != 1
    assert groups == {
        f"rbd fc gaussian lr {lr:g}": [(20, acc["rbd20"]), (40, acc["rbd40"])],
        "rbd fc gaussian lr 1": [(20, acc["rbd20-lr1"])],
        f"rbd fc gaussian layer same d per compartment lr {lr:g}": [(20, acc["rbd-layer10"])],
    }


def test_plot_groups_only_equal_lengths_and_never_repeats_a_label(tmp_path):
    from rbd_hpc.plot import accuracy_against_d, load_runs

    def fake(path, d, steps, acc):
        cfg = json.loads(TrainConfig.from_preset("fc-fmnist", d=d, steps=steps).to_json())
        return {"label": "x", "config": cfg, "directions": d, "path": Path(path),
                "rows": [{"step": steps, "test_acc": acc}]}
    runs = [fake("a.h5", 20, 100, 0.5), fake("b.h5", 40, 100, 0.6), fake("c.h5", 40, 300, 0.7)]
    assert accuracy_against_d(runs) == {"rbd fc gaussian lr 0.5, 100 steps": [(20, 50.0), (40, 60.0)],
                                        "rbd fc gaussian lr 0.5, 300 steps": [(40, 70.0)]}
    metrics = []
    for name in ("one", "two"):
        metrics.append(tmp_path / name / "m.jsonl")
        metrics[-1].parent.mkdir()
        metrics[-1].write_text(json.dumps({"epoch": 1, "step": 5, "train_loss": 2.0, "val_acc": 0.1,
                                           "test_acc": 0.1, "ms_per_step": 1.0}) + "\n")
    # same label and same file name: the paths as given tell them apart
    assert [r["label"] for r in load_runs(metrics)] == [f"m ({m})" for m in metrics]
    assert [r["label"] for r in load_runs(metrics, ["A", "B"])] == ["A", "B"]
    runs = load_runs([metrics[0], tmp_path / "one" / "m.jsonl"], ["A", "B"])
    assert [r["label"] for r in runs] == ["A", "B"]
    assert_user_error(run_cli("plot", *metrics, "--label", "A"), "1 --label value(s) for 2 input(s)")


def test_plot_bad_input(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text("{not json")
    assert_user_error(run_cli("plot", bad), "cannot read metrics file")
    for text, missing in [('{"epoch": 1}\n', "line 1 has no step, train_loss, val_acc"),
                          ("[1]\n", "line 1 has no step, epoch,")]:  # were a KeyError, a TypeError
        bad.write_text(text)
        assert_user_error(run_cli("plot", bad, "--out", tmp_path / "p"),
                          f"metrics file {bad}: {missing}", "--metrics")


def test_plot_labels_tell_runs_apart():
    from rbd_hpc.config import TrainConfig
    from rbd_hpc.plot import run_label

    def label(**kw):
        return run_label(json.loads(TrainConfig.from_preset("fc-fmnist", epochs=1, **kw).to_json()))

    assert label(dist="srht") == "rbd fc d=250 srht lr 0.5"
    assert label(dist="srht", lr=4, schedule="cosine", compartments="layer") == \
        "rbd fc d=250 srht layer lr 4 cosine"
    assert label(dist="srht", lr=4, schedule="cosine", lr_min=0.5) == "rbd fc d=250 srht lr 4 cosine to 0.5"
    assert label(dist="srht", lr=4, lr_scale="fc1=3") == "rbd fc d=250 srht lr 4 ×fc1=3"
    assert label(dist="srht", compartments="layer", allocate="equal") == "rbd fc d=250 srht layer equal lr 0.5"
    assert label(dist="srht", compartments="layer", d_per_compartment=125) == \
        "rbd fc d=125/compartment srht layer lr 0.5"
    assert label(method="sgd", momentum=0.9, lr=0.01, augment=True) == "sgd fc lr 0.01 mom 0.9 aug"
    assert label(method="rigl", sparsity=0.9) == "rigl fc sparsity 0.9 lr 0.25"
    assert label(dist="srht", weight_decay=3e-5, svrg_every=1718, seed=1) == \
        "rbd fc d=250 srht lr 0.5 wd 3e-05 svrg 1718 seed 1"


def test_bench_svrg_rows_add_the_anchor_pass_spread_over_its_steps():
    proc = run_cli("bench", "--model", "fc", "--d", "20", "--steps", "3", "--dist", "srht",
                   "--no-reference", "--svrg-every", "100")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["sgd", "rbd-srht", "rbd-srht+svrg"]
    note = lines[5].split()
    assert lines[5].startswith("(+svrg rows: one anchor pass over the training set took ")
    pass_ms, per_step = float(note[10]), float(note[12])  # "took 2469 ms, 24.691 ms per step"
    assert pass_ms > 0 and abs(per_step - pass_ms / 100) <= 0.5 / 100 + 5e-4  # print rounding
    assert_user_error(run_cli("bench", "--svrg-every", "-2"), "--svrg-every -2 must be a number")


def test_tensorboard_scalars_match_the_run_file(tmp_path, idx_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, board = tmp_path / "tb.h5", tmp_path / "board"
    proc = run_cli("train", "--data-dir", idx_dir, "--val-size", "64", "--steps", "40", "--d", "16",
                   "--dist", "srht", "--threads", "1", "--no-progress", "--out", out,
                   "--tensorboard", board)
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(board))
    events.Reload()
    loss = events.Scalars("train/loss")
    with h5py.File(out, "r") as f:
        logged = f["steps/loss"][:40]
        val_acc = f["metrics/table"][:]
    assert [e.step for e in loss] == list(range(1, 41))
    assert [e.value for e in loss] == [float(v) for v in logged.astype("float32")]
    assert [e.step for e in events.Scalars("val/acc")] == [18, 36, 40]  # 576 samples / 32 per step
    assert len(val_acc) == 3
    assert_user_error(run_cli("train", "--data-dir", idx_dir, "--steps", "2", "--val-size", "64",
                              "--tensorboard", out, "--out", tmp_path / "x.h5"),
                      "cannot write --tensorboard")
