"""Robust under abuse: damaged run files, wrong input, two writers, full disks. Every case ends
in one line and exit 2 (or works, where working is right) within a time bound, and what was
already written is unchanged."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import (ROOT, assert_user_error, final_theta, run_cli, synthetic_images, venv_bin,
                      wait_for_commits, write_idx)
from rbd_hpc.config import TrainConfig
from rbd_hpc.errors import UserError
from rbd_hpc.launch import submit
from rbd_hpc.runlog import RunFile, header_crc

pytestmark = pytest.mark.timeout(600)
TINY = ["--val-size", "64", "--threads", "1", "--no-progress"]
QUICK = 30  # seconds: a damaged file is diagnosed, not read for minutes


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quick(*args, **kw) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = run_cli(*args, timeout=QUICK, **kw)
    assert time.monotonic() - t0 < QUICK
    return proc


@pytest.fixture(scope="module")
def run(idx_dir, tmp_path_factory) -> Path:
    """A small finished RBD run (the current format), 30 steps, snapshots every 10."""
    out = tmp_path_factory.mktemp("abuse") / "run.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "30", "--d", "8",
                   "--dist", "srht", "--snapshot-every", "10", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


# -- damaged run files ------------------------------------------------------------------------

def killed_writer_copy(src: Path, dst: Path) -> Path:
    """A copy whose HDF5 'open for write' flag is set, as a live or SIGKILLed writer leaves it."""
    copy(src, dst)
    code = (f"import h5py, os; f = h5py.File({str(dst)!r}, 'r+', libver='latest'); "
            "f.swmr_mode = True; f.flush(); os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    return dst


@pytest.mark.parametrize("flagged", [False, True], ids=["finished", "killed-writer"])
@pytest.mark.parametrize("keep", [8, 48, 96, 2048, 100_000, "half"])
def test_a_truncated_run_file_is_one_line_at_once(run, tmp_path, keep, flagged):
    whole = killed_writer_copy(run, tmp_path / "w.h5") if flagged else run
    data = whole.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[:len(data) // 2 if keep == "half" else keep])
    for cmd in (["inspect", cut], ["replay", cut, "--verify"], ["train", "--resume", cut]):
        proc = quick(*cmd)
        assert_user_error(proc)
        assert "truncated" in proc.stderr or "not an HDF5 file" in proc.stderr, proc.stderr
    assert len(cut.read_bytes()) < len(data)  # the resume did not replace it


def test_a_killed_writers_whole_file_still_reads(run, tmp_path):
    flagged = killed_writer_copy(run, tmp_path / "k.h5")
    proc = quick("replay", flagged, "--verify")
    assert "verify: OK over 30 steps" in proc.stdout, proc.stderr


def test_a_commit_marker_beyond_the_rows_is_refused(run, tmp_path):
    bad = copy(run, tmp_path / "bad.h5")
    with h5py.File(bad, "r+") as f:
        f["commit"][0] = 10**12
    for cmd in (["inspect", bad], ["replay", bad, "--verify"], ["train", "--resume", bad]):
        assert_user_error(quick(*cmd), "commit marker says 1000000000000 steps", "holds 30 rows")


@pytest.mark.parametrize("column,row", [("lr", 7), ("step", 12), ("loss", 3)])
def test_a_flipped_byte_in_any_row_column_is_caught(run, tmp_path, column, row):
    bad = copy(run, tmp_path / "bad.h5")
    with h5py.File(bad, "r+") as f:
        raw = bytearray(f[f"steps/{column}"][row].tobytes())
        raw[0] ^= 1
        f[f"steps/{column}"][row] = np.frombuffer(bytes(raw), f[f"steps/{column}"].dtype)[0]
    before = digest(bad)
    for cmd in (["replay", bad, "--verify"], ["train", "--resume", bad]):
        assert_user_error(quick(*cmd), f"coefficients of step {row} fail their checksum")
    assert digest(bad) == before


def test_a_changed_snapshot_label_is_caught(run, tmp_path):
    bad = copy(run, tmp_path / "bad.h5")
    with h5py.File(bad, "r+") as f:
        f["snapshots/step"][2] = 25  # the snapshot of step 20 would resume as step 25
    for cmd in (["replay", bad, "--verify"], ["train", "--resume", bad]):
        assert_user_error(quick(*cmd), "snapshot of step 25 fails its checksum")


def edit_config(path: Path, edit, forge: bool) -> None:
    """Change the stored config; with ``forge`` also recompute the header checksum, so the
    validation behind it is what must catch the change."""
    with h5py.File(path, "r+") as f:
        edit(f.attrs)
        if forge:
            f.attrs["header_crc32"] = header_crc({k: f.attrs[k] for k in f.attrs})


def cfg_edit(**change):
    def edit(attrs):
        values = json.loads(attrs["config"])
        values.update(change)
        for k in [k for k, v in change.items() if v is ...]:
            del values[k]
        attrs["config"] = json.dumps(values)
    return edit


@pytest.mark.parametrize("edit,fragment", [
    (lambda a: a.__delitem__("config"), "is not an rbd-hpc run file ('"),
    (lambda a: a.__setitem__("config", "{not json"), "attribute config is not valid JSON"),
    (lambda a: a.__setitem__("config", "[1, 2]"), "attribute config is a JSON list"),
    (cfg_edit(learning_rate=0.1), "has unknown key(s) ['learning_rate']"),
    (cfg_edit(d="8"), "--d '8' must be an integer"),
    (cfg_edit(d=9), "makes 9 coefficients per step but its rows hold 8"),
    (cfg_edit(threads=2**31), "--threads 2147483648 must be at most 4096"),
    (cfg_edit(model=...), "lacks key(s) ['model']"),
    (cfg_edit(lr_min=...), "lacks key(s) ['lr_min']"),  # format 6 always writes it
    (cfg_edit(lr_scale=...), "lacks key(s) ['lr_scale']"),  # format 7 always writes it
    (cfg_edit(seed=1.5), "--seed 1.5 must be an integer"),
], ids=["missing", "not-json", "list", "unknown-key", "string-d", "d-vs-rows", "threads",
        "no-model", "no-lr-min", "no-lr-scale", "float-seed"])
def test_an_edited_config_is_one_line(run, tmp_path, edit, fragment):
    bad = copy(run, tmp_path / "bad.h5")
    edit_config(bad, edit, forge=False)
    assert_user_error(quick("inspect", bad))  # the header checksum catches every edit
    with h5py.File(bad, "r") as f:
        forgeable = "config" in f.attrs
    if forgeable:
        edit_config(bad, lambda a: None, forge=True)
    for cmd in (["replay", bad], ["train", "--resume", bad]):
        assert_user_error(quick(*cmd), fragment)


@pytest.mark.parametrize("version", [5, 6])
def test_a_file_from_before_the_cosine_floor_or_the_rate_multipliers_reads_as_none_and_resumes_bitwise(
        run, tmp_path, version):
    """Format 6 added lr_min, format 7 lr_scale: an older file reads as the run it was."""
    old = copy(run, tmp_path / "old.h5")
    edit_config(old, cfg_edit(lr_scale=..., **({"lr_min": ...} if version == 5 else {})), forge=True)
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = version  # not covered by the header checksum
    with RunFile(old) as r:
        assert (r.version, r.config().lr_min, r.config().lr_scale) == (version, 0.0, None)
    proc = quick("replay", old, "--verify")
    assert proc.returncode == 0 and "verify: OK over 30 steps" in proc.stdout, proc.stdout
    with h5py.File(old, "r+") as f:
        f["commit"][...] = [15, 2]  # steps 0..14 and the snapshots at 0 and 10
    assert quick("train", "--resume", old).returncode == 0
    assert np.array_equal(final_theta(old), final_theta(run))


# -- one writer per run file --------------------------------------------------------------------

def test_two_writers_can_never_both_succeed(idx_dir, tmp_path):
    out = tmp_path / "live.h5"
    first = subprocess.Popen([venv_bin("rbd-hpc"), "train", "--data-dir", str(idx_dir), *TINY,
                              "--steps", "100000", "--d", "8", "--dist", "srht", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_commits(out, 5)
        for cmd in (["train", "--data-dir", idx_dir, *TINY, "--steps", "5", "--out", out],
                    ["train", "--data-dir", idx_dir, *TINY, "--steps", "5", "--out", out,
                     "--overwrite"],
                    ["train", "--resume", out, "--no-progress"]):
            assert_user_error(quick(*cmd), f"run file {out} is being written by pid {first.pid}")
        assert first.poll() is None  # the writer was not disturbed
    finally:
        first.terminate()
        first.communicate(timeout=60)
    assert first.returncode == 3  # SIGTERM: committed and stopped
    assert not (tmp_path / "live.h5.lock").exists()
    with RunFile(out) as r:
        done = r.committed
    proc = quick("train", "--resume", out, "--steps", str(done + 5), "--data-dir", idx_dir,
                 "--no-progress")
    assert proc.returncode == 0, proc.stderr  # the lock went with its holder
    with RunFile(out) as r:
        assert r.committed == done + 5


def test_simultaneous_new_runs_on_one_file_leave_one_writer(idx_dir, tmp_path):
    out = tmp_path / "race.h5"
    cmd = [venv_bin("rbd-hpc"), "train", "--data-dir", str(idx_dir), *TINY, "--steps", "40",
           "--d", "8", "--dist", "srht", "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    assert codes == [0, 2, 2], [p.stderr.read() for p in procs]
    with RunFile(out) as r:
        assert r.committed == 40


@pytest.mark.parametrize("metrics", ["same", "dir", "runfile"])
def test_a_metrics_path_that_aliases_is_refused_before_writing(run, tmp_path, idx_dir, metrics):
    out = copy(run, tmp_path / "r.h5")
    other = copy(run, tmp_path / "other.h5")
    target = {"same": out, "dir": tmp_path, "runfile": other}[metrics]
    before = digest(out), digest(other)
    for cmd in (["train", "--data-dir", idx_dir, *TINY, "--out", out, "--overwrite",
                 "--metrics", target],
                ["train", "--resume", out, "--metrics", target, "--no-progress"]):
        assert_user_error(quick(*cmd), "--metrics")
    assert (digest(out), digest(other)) == before


# -- resume: exact or refused, on every entry point ---------------------------------------------

def test_a_resume_on_another_rank_count_is_refused(run, tmp_path):
    out = copy(run, tmp_path / "r.h5")
    before = digest(out)
    proc = subprocess.run([venv_bin("mpiexec"), "-n", "2", venv_bin("rbd-hpc"), "train",
                           "--resume", str(out), "--no-progress"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "on 2 rank(s): the run was trained on 1" in proc.stderr
    assert digest(out) == before


def test_a_schedule_that_depends_on_the_length_refuses_a_new_length(idx_dir, tmp_path):
    out = tmp_path / "cos.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "20", "--d", "8",
                   "--schedule", "cosine", "--out", out)
    assert proc.returncode == 0, proc.stderr
    before = digest(out)
    for length in (["--steps", "40"], ["--epochs", "5"]):
        assert_user_error(quick("train", "--resume", out, *length, "--data-dir", idx_dir),
                          "depends on the run length")
    assert digest(out) == before
    assert_user_error(quick("train", "--epochs", "2", "--steps", "30"),
                      "--epochs 2 and --steps 30 both set the run length")


def test_a_constant_schedule_resumes_to_a_new_length_bitwise(run, idx_dir, tmp_path):
    out = copy(run, tmp_path / "r.h5")
    proc = quick("train", "--resume", out, "--steps", "45", "--data-dir", idx_dir, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    ref = tmp_path / "ref.h5"
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "45", "--d", "8", "--dist",
                   "srht", "--snapshot-every", "10", "--out", ref)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(final_theta(out), final_theta(ref))


def test_the_python_launcher_refuses_a_run_file_it_would_not_continue(run, tmp_path):
    out = copy(run, tmp_path / "r.h5")
    before = digest(out)
    other = TrainConfig.from_preset("fc-fmnist", steps=30, d=20, dist="srht", val_size=64,
                                    threads=1, snapshot_every=10)
    with pytest.raises(UserError, match=r"config differs from the run file in d"):
        submit(other, str(out), backend="local", folder=str(tmp_path / "logs"))
    assert digest(out) == before and not (tmp_path / "logs").exists()


def test_the_sweep_script_refuses_an_output_of_another_basis(run, tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    copy(run, sweep / "d8.h5")  # an srht run where the sweep asks for gaussian
    before = digest(sweep / "d8.h5")
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "sweep_d.py"), "--d", "8",
                           "--dist", "gaussian", "--steps", "30", "--out", str(sweep),
                           "--backend", "local"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "config differs from the run file in dist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert digest(sweep / "d8.h5") == before


# -- input at the boundary ----------------------------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["--lr", "1e300"], "--lr 1e+300 must be a positive finite number (at most 1e+30)"),
    (["--threads", "2147483648"], "--threads 2147483648 must be at most 4096"),
    (["--out", ""], "--out '' is empty; give a file name"),
    (["--metrics", ""], "--metrics '' is empty; give a file name"),
    (["--preset", ""], "--preset '' is not valid"),
    (["--data-dir", ""], "--data-dir must not be empty"),
    (["--out", "x" * 300 + ".h5"], "is too long for its file system"),
])
def test_bad_flags_are_one_line(args, fragment):
    assert_user_error(quick("train", *args), fragment)


def test_replay_threads_out_of_range_is_one_line(run):
    assert_user_error(quick("replay", run, "--threads", "2147483648"), "at most 4096")


def test_an_extreme_allocation_power_trains(idx_dir, tmp_path):
    for p in ("power:1000", "power:-1000"):
        proc = quick("train", "--data-dir", idx_dir, *TINY, "--steps", "2", "--d", "20",
                     "--compartments", "layer", "--allocate", p)
        assert proc.returncode == 0, proc.stderr


def idx_files(root: Path, images: np.ndarray, labels: np.ndarray, raw_images: bytes | None = None):
    root.mkdir(parents=True, exist_ok=True)
    xte, yte = synthetic_images(20, 28, 1, 2)
    write_idx(root / "t10k-images-idx3-ubyte", xte[..., 0], False)
    write_idx(root / "t10k-labels-idx1-ubyte", yte, False)
    write_idx(root / "train-labels-idx1-ubyte", labels, False) if labels.dtype == np.uint8 else \
        (root / "train-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 0x0D, 1]) + len(labels).to_bytes(4, "big") + labels.astype(">f4").tobytes())
    if raw_images is not None:
        (root / "train-images-idx3-ubyte").write_bytes(raw_images)
    else:
        write_idx(root / "train-images-idx3-ubyte", images, False)
    return root


@pytest.mark.parametrize("case,fragment", [
    ("float-images", "train images in"),
    ("nan-labels", "train labels in"),
    ("overflowing-dims", "is corrupt"),
    ("tiny-images", "model cnn needs images of at least 18×18, got 2×2"),
    ("empty-test", "the test split in"),
])
def test_bad_data_files_are_one_line(tmp_path, case, fragment):
    x, y = synthetic_images(100, 28, 1, 1)
    root = tmp_path / case
    if case == "float-images":
        raw = (bytes([0, 0, 0x0D, 3]) + b"".join(int(n).to_bytes(4, "big") for n in x.shape[:3])
               + x[..., 0].astype(">f4").tobytes())
        idx_files(root, x[..., 0], y, raw)
    elif case == "nan-labels":
        idx_files(root, x[..., 0], np.where(np.arange(100) == 5, np.nan, y).astype(np.float32))
    elif case == "overflowing-dims":
        raw = bytes([0, 0, 0x08, 3]) + (2**31).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big")
        idx_files(root, x[..., 0], y, raw)
    elif case == "tiny-images":
        idx_files(root, x[:, :2, :2, 0].copy(), y)
        for name in ("t10k-images-idx3-ubyte",):
            write_idx(root / name, x[:20, :2, :2, 0].copy(), False)
    else:
        idx_files(root, x[..., 0], y)
        write_idx(root / "t10k-images-idx3-ubyte", x[:0, :, :, 0].copy(), False)
        write_idx(root / "t10k-labels-idx1-ubyte", y[:0], False)
    preset = "cnn-fmnist" if case == "tiny-images" else "fc-fmnist"
    assert_user_error(quick("train", "--preset", preset, "--data-dir", root, *TINY,
                            "--steps", "1"), fragment)


# -- a full disk --------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 1.2 MB tmpfs (root only): room for θ0 and little more."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_full_disk_ends_in_one_line_and_keeps_what_was_committed(small_disk, idx_dir):
    out = small_disk / "run.h5"
    proc = quick("train", "--data-dir", idx_dir, *TINY, "--steps", "60", "--d", "8", "--dist",
                  "srht", "--snapshot-every", "10", "--out", out)
    assert_user_error(proc, "no space left for run file")
    assert proc.returncode == 2 and "Segmentation" not in proc.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["run.h5"]  # no .tmp, no .lock
    with RunFile(out) as r:
        committed = r.committed
    proc = quick("replay", out, "--verify")
    assert proc.returncode == 0, proc.stderr
    before = digest(out)
    assert_user_error(quick("train", "--resume", out, "--data-dir", idx_dir), "no space left")
    assert digest(out) == before and sorted(p.name for p in small_disk.iterdir()) == ["run.h5"]
    with RunFile(out) as r:
        assert r.committed == committed


def test_relaunching_a_finished_run_returns_its_summary_and_changes_nothing(run, tmp_path):
    out = copy(run, tmp_path / "done.h5")
    with RunFile(out) as r:
        stored = r.metrics()[-1]
        rows = r.committed
    proc = quick("train", "--resume", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"30 steps, test_acc {stored['test_acc']:.4f}, val_acc {stored['val_acc']:.4f}" in proc.stdout
    with RunFile(out) as r:
        assert r.committed == rows and r.metrics()[-1] == stored
