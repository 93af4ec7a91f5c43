"""One source of truth for options: the config's fields make the flags, the help, the
checks and the resume rule; every config is built through the one validating constructor."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess

import h5py
import numpy as np
import pytest

from conftest import ROOT, assert_user_error, run_cli, venv_bin, wait_for_commits
from rbd_hpc.cli import build_parser
from rbd_hpc.config import FIELDS, TrainConfig, field_kind
from rbd_hpc.errors import UserError
from rbd_hpc.preemption import PREEMPT_SIGNALS, StopRequest
from rbd_hpc.runlog import RunFile

TINY = ["--val-size", "64", "--threads", "1", "--no-progress"]
GOLDEN_RUN = ROOT / "tests" / "data" / "written_by_0.1.0.h5"


def test_every_option_is_a_flag_with_its_help_and_default():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["cli"]:  # the preset: the CLI's own flag
            assert f.name not in actions or f.name == "preset"
            continue
        action = actions[f.name]
        alias = ["--data"] if f.name == "dataset" else []
        if field_kind(f)[0] == "bool":  # and its negation: appended options can turn it off
            alias = ["--no-" + f.name.replace("_", "-")]
        assert action.option_strings == ["--" + f.name.replace("_", "-")] + alias
        assert action.help.startswith(f.metadata["help"])
        if f.metadata["factory"]:  # model, data set: the default is the preset's
            assert f"(default {f.default})" not in action.help
        elif f.default not in (None, False):
            assert f"(default {f.default})" in action.help
        for choice in f.metadata["choices"] or ():
            assert str(choice) in action.help


def test_the_added_option_needs_nothing_but_its_field(idx_dir, tmp_path):
    """--eval-batch-size was added as one field: flag, check, resume rule and effect."""
    assert FIELDS["eval_batch_size"].metadata["resume_free"]
    assert_user_error(run_cli("train", "--eval-batch-size", "0"),
                   "--eval-batch-size 0 must be a positive number")
    outs = []
    for batch in ("7", "1000"):
        out = tmp_path / f"e{batch}.h5"
        proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "6", "--d", "10",
                       "--eval-batch-size", batch, "--out", out)
        assert proc.returncode == 0, proc.stderr
        with RunFile(out) as run:
            outs.append((run.metrics()[-1], run.snapshot(run.n_snapshots - 1)[1]))
    (m7, theta7), (m1000, theta1000) = outs
    assert np.array_equal(theta7, theta1000)               # the trajectory does not see it
    assert m7["val_acc"] == m1000["val_acc"] and m7["test_acc"] == m1000["test_acc"]
    proc = run_cli("train", "--resume", tmp_path / "e7.h5", "--steps", "8", "--eval-batch-size",
                   "3", "--data-dir", idx_dir, "--no-progress")
    assert proc.returncode == 0, proc.stderr               # a resume may change it


@pytest.mark.parametrize("values,fragment", [
    ({"d": 20, "bogus": 1}, "--config-json has unknown key(s) ['bogus']; valid: model, dataset, "
                            "method"),
    ({"d": "250"}, "--d '250' must be an integer"),
    ({"d": True}, "--d True must be an integer"),
    ({"lr": "fast"}, "--lr 'fast' must be a number"),
    ({"augment": 1}, "--augment 1 must be true or false"),
    ({"method": None}, "--method must be set"),
    ({"val_size": -1}, "--val-size -1 must be ≥ 0"),
    ([1, 2], "--config-json must be a mapping of config fields, not list"),
])
def test_bad_config_json_is_one_line(values, fragment):
    assert_user_error(run_cli("train", "--config-json", json.dumps(values)), fragment)


def test_python_api_builds_through_the_same_checks():
    with pytest.raises(UserError, match=r"preset overrides has unknown key\(s\) \['dd'\]"):
        TrainConfig.from_preset("fc-fmnist", dd=3)
    with pytest.raises(UserError, match="--chunk 2.5 must be an integer"):
        TrainConfig(chunk=2.5)
    assert TrainConfig.from_dict(json.loads(TrainConfig(d=7).to_json())) == TrainConfig(d=7)


def test_a_run_file_with_an_unknown_config_key_is_one_line(tmp_path):
    run = tmp_path / "odd.h5"
    run.write_bytes(GOLDEN_RUN.read_bytes())
    with h5py.File(run, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        f.attrs["config"] = json.dumps({**cfg, "learning_rate": 0.1})
    for cmd in (["replay", run], ["train", "--resume", run, "--no-progress"]):
        assert_user_error(run_cli(*cmd), "config has unknown key(s) ['learning_rate']")


# -- a run file written before the redesign ---------------------------------------------------

def test_a_run_file_of_0_1_0_inspects_replays_and_resumes_bitwise(idx_dir, tmp_path):
    """Written by rbd-hpc 0.1.0 before the spine was split (srht, layer compartments,
    momentum; 12 steps on the conftest data): it inspects, verifies, and resumes to 20 steps
    with the arithmetic it was written with (kernel generation 1): the resumed file keeps its
    12 rows bit for bit and verifies bitwise over all 20 steps, so the 8 new steps were taken
    with generation 1's arithmetic (generation 2 or 3 rounds the same directions otherwise).
    It follows the trajectory a fresh 20-step run of today's code takes with --kernels 1: bit
    for bit on the CPU kind that wrote the file (where the fresh run's first 12 rows equal the
    file's), within float32 rounding elsewhere (other CPUs round the gradients otherwise)."""
    old = tmp_path / "old.h5"
    old.write_bytes(GOLDEN_RUN.read_bytes())
    with RunFile(old) as golden:
        golden_rows = golden.steps()["coefficients"]
    proc = run_cli("inspect", old)
    assert proc.returncode == 0 and "committed     12 steps" in proc.stdout, proc.stderr
    assert "(srht directions, kernel generation 1)" in proc.stdout
    assert "trained on    not recorded (written before rbd-hpc recorded platforms)" in proc.stdout
    proc = run_cli("replay", old, "--verify")
    assert "verify: OK over 12 steps, 2 snapshots, max |diff| 0 (1 thread)" in proc.stdout
    proc = run_cli("train", "--resume", old, "--steps", "20", "--data-dir", idx_dir,
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("replay", old, "--verify")
    assert "verify: OK over 20 steps, 3 snapshots, max |diff| 0 (1 thread)" in proc.stdout, (
        proc.stdout + proc.stderr)
    fresh = tmp_path / "fresh.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "20", "--d", "8",
                   "--dist", "srht", "--compartments", "layer", "--momentum", "0.5",
                   "--snapshot-every", "1000", "--kernels", "1", "--out", fresh)
    assert proc.returncode == 0, proc.stderr
    with RunFile(old) as a, RunFile(fresh) as b:
        assert a.config().kernels == b.config().kernels == 1 and a.version == 7
        # the variants it was trained with are kept through the resume
        assert (a.config().nes, a.config().mask_update) == ("same-batch", "rbd-hpc-0.1")
        assert a.committed == b.committed == 20
        rows_a, rows_b = a.steps()["coefficients"], b.steps()["coefficients"]
        assert np.array_equal(rows_a[:12], golden_rows)
        theta_a, theta_b = a.snapshot(a.n_snapshots - 1)[1], b.snapshot(b.n_snapshots - 1)[1]
        if np.array_equal(rows_b[:12], golden_rows):   # the CPU kind that wrote the file
            assert np.array_equal(rows_a, rows_b) and np.array_equal(theta_a, theta_b)
        else:
            assert np.allclose(rows_a, rows_b, rtol=1e-3, atol=1e-6)
            assert np.allclose(theta_a, theta_b, rtol=1e-4, atol=1e-7)


def test_a_new_run_records_the_current_kernel_generation(idx_dir, tmp_path):
    """The config names the generation (since format 3; format 4 also the protocol and the NES
    and RigL variants; format 5 generation 3 and the platform record; format 6 the cosine
    schedule's floor; format 7 the per-compartment rate multipliers); a generation that does
    not exist is one line listing the valid ones."""
    out = tmp_path / "new.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "3", "--d", "4",
                   "--dist", "srht", "--out", out)
    assert proc.returncode == 0, proc.stderr
    with RunFile(out) as run:
        assert run.version == 7 and run.config().kernels == 3
        stored = json.loads(run.attrs["config"])
        assert (stored["kernels"], stored["protocol"], stored["nes"], stored["mask_update"]) == (
            3, "custom", "same-batch", "published")
    assert_user_error(run_cli("train", "--kernels", "4", "--steps", "1"),
                      "--kernels 4 is not valid; choose one of: 1, 2, 3")


# -- one preemption protocol --------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_every_preemption_signal_stops_the_cli_with_exit_code_3(idx_dir, tmp_path, sig):
    out = tmp_path / "pre.h5"
    cmd = [venv_bin("rbd-hpc"), "train", "--data-dir", str(idx_dir), *TINY, "--out", str(out),
           "--steps", "4000", "--d", "10", "--method", "sgd"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    wait_for_commits(out, 3)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    assert "preempted after step" in stdout
    with RunFile(out) as run:
        assert 0 < run.committed < 4000 and run.snapshot_steps()[-1] == run.committed


def test_stop_request_hands_the_signal_back_to_the_previous_handler():
    seen = []
    before = {s: signal.signal(s, lambda signum, frame: seen.append(signum)) for s in PREEMPT_SIGNALS}
    try:
        with StopRequest() as stop:
            assert not stop()
            signal.raise_signal(signal.SIGUSR2)
            assert stop() and seen == []          # ours, not the previous handler, got it
            stop.pass_on()                        # after the commit: the previous handler runs
            assert seen == [signal.SIGUSR2]
        signal.raise_signal(signal.SIGUSR1)       # the previous handlers are back
        assert seen == [signal.SIGUSR2, signal.SIGUSR1]
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def test_design_doc_is_where_the_docstrings_point():
    design = (ROOT / "docs" / "design.md").read_text()
    assert "## Invariants" in design and "## Preemption" in design
    cited = set()
    for path in (ROOT / "rbd_hpc").rglob("*.py"):
        text = path.read_text()
        assert "DESIGN.md" not in text, path
        cited.update(int(n) for n in re.findall(r"design\.md, invariant (\d)", text))
    assert cited and all(f"\n{n}. **" in design for n in cited)


# -- one configuration mechanism: a file, the merged view, a dry run -------------------------------

def printed_config(path, text: str, *flags) -> dict:
    """``text`` written to ``path``, then ``train --config path FLAGS --print-config``."""
    path.write_text(text)
    proc = run_cli("train", "--config", path, *flags, "--print-config")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_config_file_merges_under_the_flags_and_prints(tmp_path):
    toml = tmp_path / "run.toml"
    merged = printed_config(toml, 'preset = "cnn-fmnist"\nlr = 0.5\ndist = "srht"\nsteps = 100\n',
                            "--lr", "0.1")
    # the preset's model, then the file, then the flags
    assert (merged["model"], merged["d"], merged["dist"], merged["steps"], merged["lr"]) == (
        "cnn", 250, "srht", 100, 0.1)
    # what --print-config shows is a config file itself
    assert printed_config(tmp_path / "merged.json", json.dumps(merged)) == merged
    proc = run_cli("train", "--config", toml, "--preset", "fc-fmnist", "--print-config")
    assert json.loads(proc.stdout)["model"] == "fc"  # the --preset flag outranks the file


def test_a_yaml_config_file_and_flags_merge(tmp_path):
    merged = printed_config(tmp_path / "run.yaml",
                            "preset: cnn-fmnist\nmethod: rbd\ndist: srht\nd: 64\nlr: 0.5\n",
                            "--lr", "0.1")
    assert (merged["model"], merged["dist"], merged["d"], merged["lr"]) == ("cnn", "srht", 64, 0.1)
    for name, text, fragment in [("bad.yaml", "d: [1,\n", "is not valid YAML: while parsing"),
                                 ("list.yml", "- 1\n- 2\n", "must be a mapping of config "
                                                            "fields, not list"),
                                 ("run.ini", "d=1\n", "unknown format; name it .toml, .yaml")]:
        (tmp_path / name).write_text(text)
        assert_user_error(run_cli("train", "--config", tmp_path / name), fragment)


@pytest.mark.parametrize("text,fragment", [
    ("lr = \n", "is not valid TOML: Invalid value (at line 1, column 6)"),
    ("lrr = 1\n", "has unknown key(s) ['lrr']; valid: model, dataset"),
    ('d = "many"\n', "--d 'many' must be an integer"),
    ('preset = "vgg"\n', "--preset 'vgg' is not valid"),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, fragment):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    assert_user_error(run_cli("train", "--config", bad, "--print-config"), fragment)
    assert_user_error(run_cli("train", "--config", tmp_path / "none.toml"), "cannot read config file")
    assert_user_error(run_cli("train", "--config", bad, "--config-json", "{}"), "give one of them")


def test_a_dry_run_checks_everything_and_writes_nothing(idx_dir, tmp_path):
    out = tmp_path / "new.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "7", "--d", "12",
                   "--dry-run", "--out", out, "--metrics", tmp_path / "m.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert "dry run OK: rbd fc-fmnist, D = 101,770, 12 coefficients per step, 7 steps" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert_user_error(run_cli("train", "--data-dir", tmp_path / "nowhere", "--dry-run"),
                      "does not exist")
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip().startswith("rbd-hpc 0.")
