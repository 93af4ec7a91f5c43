"""Real MPI (mpich wheel): invariants at 1, 2 and 4 ranks (oversubscribed on 2 cores)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import final_theta, run_cli, venv_bin
from rbd_hpc.comm import on_every_rank, on_root, run_threaded
from rbd_hpc.errors import AgreedError, UserError

pytestmark = pytest.mark.timeout(300)
DRIVER = Path(__file__).with_name("mpi_driver.py")
TINY = ["--val-size", "64", "--batch-size", "32", "--d", "20", "--threads", "1", "--no-progress"]


def mpiexec(n: int, *args, env=None, timeout=240) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    cmd = [venv_bin("mpiexec"), "-n", str(n), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout)


def train_mpi(n: int, out: Path, idx_dir, *extra) -> dict:
    metrics = out.with_suffix(".jsonl")
    proc = mpiexec(n, venv_bin("rbd-hpc"), "train", "--data-dir", idx_dir, *TINY, "--out", out,
                   "--metrics", metrics, *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(metrics.read_text().splitlines()[-1])


def coefficients(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["steps/coefficients"][:int(f["commit"][0])]


@pytest.mark.parametrize("ranks", [1, 2, 4])
@pytest.mark.parametrize("mode", ["shared", "per-rank"])
def test_theta_bitwise_identical_on_every_rank_after_every_step(ranks, mode, idx_dir, tmp_path):
    # --check-every 1 hashes θ on every rank after every step and fails on any difference
    last = train_mpi(ranks, tmp_path / "run.h5", idx_dir, "--steps", "12", "--mode", mode,
                     "--check-every", "1")
    assert last["step"] == 12


@pytest.mark.parametrize("method", ["rbd", "sgd", "rigl"])
def test_ranks_on_different_kinds_of_cpu_stay_identical_in_generation_3(method, idx_dir,
                                                                         tmp_path):
    """One job over two kinds of CPU (rank 1 on ATen's baseline kernels and MKL's SSE2 path,
    an MPMD launch): the ranks' gradients round differently, but the averaged coefficients (or
    gradient) are one set and generation 3 applies them with the same bits everywhere, so θ
    stays bitwise identical on both (--check-every 1), RigL's mask updates included;
    generation 2 (BLAS sums, fused rate × step) diverges after the first step and says what
    to check."""
    def run(generation):
        args = [venv_bin("rbd-hpc"), "train", "--data-dir", str(idx_dir), *TINY, "--steps", "12",
                "--method", method, "--mask-every", "4", "--lr", "0.3", "--schedule", "cosine",
                "--momentum", "0.5", "--check-every", "1", "--kernels", str(generation),
                "--out", str(tmp_path / f"{method}-g{generation}.h5")]
        cmd = [venv_bin("mpiexec"), "-n", "1", *args, ":", "-n", "1",
               "-env", "ATEN_CPU_CAPABILITY", "default", "-env", "MKL_CBWR", "COMPATIBLE", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    proc = run(3)
    assert proc.returncode == 0, proc.stderr
    proc = run(2)
    assert proc.returncode != 0
    assert ("ranks diverged after step 1: θ on rank(s) [1] differs from rank 0" in proc.stderr
            and "kernel generation 1 or 2, the same kind of CPU" in proc.stderr), proc.stderr


@pytest.mark.parametrize("mode", ["shared", "per-rank"])
def test_momentum_keeps_ranks_identical_sends_d_floats_and_replays(mode, idx_dir, tmp_path):
    out = tmp_path / "mom.h5"
    last = train_mpi(2, out, idx_dir, "--steps", "12", "--mode", mode, "--check-every", "1",
                     "--momentum", "0.9", "--lr", "0.05", "--snapshot-every", "5")
    # the velocity is never exchanged: rank 0 hands over its d coefficients (and, as the root
    # of shared mode's reduction, broadcasts the d averaged ones); per-rank mode gathers them
    assert last["bytes_per_step"] == {"shared": 2 * 4 * 20, "per-rank": 4 * 20}[mode]
    proc = run_cli("replay", out, "--verify")
    assert "verify: OK over 12 steps, 4 snapshots, max |diff| 0" in proc.stdout, proc.stdout


@pytest.mark.parametrize("mode", ["shared", "per-rank"])
def test_a_rate_multiplier_keeps_ranks_identical_sends_d_floats_and_replays(mode, idx_dir,
                                                                             tmp_path):
    """--lr-scale is config on every rank: the exchange is the same d floats, the ranks stay
    identical step by step, and per-rank mode with R ranks is one process with R·d."""
    scaled = ["--compartments", "layer", "--allocate", "equal", "--dist", "srht",
              "--lr-scale", "fc1=3,fc2=0.5",
              "--steps", "12", "--snapshot-every", "5"]
    out = tmp_path / "scaled.h5"
    last = train_mpi(2, out, idx_dir, *scaled, "--mode", mode, "--check-every", "1")
    assert last["bytes_per_step"] == {"shared": 2 * 4 * 20, "per-rank": 4 * 20}[mode]
    proc = run_cli("replay", out, "--verify")
    assert "verify: OK over 12 steps, 4 snapshots, max |diff| 0" in proc.stdout, proc.stdout
    if mode == "per-rank":
        single = tmp_path / "single.h5"
        train_mpi(1, single, idx_dir, *scaled, "--d", "40")
        np.testing.assert_allclose(coefficients(out), coefficients(single), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(final_theta(out), final_theta(single), rtol=0, atol=1e-6)


def test_smooth_basis_per_rank_equals_one_process_and_replays(idx_dir, tmp_path):
    # per-rank mode draws each rank's share of the smooth directions in its own chunk, then
    # applies all of them: the directions must not depend on the range they are drawn in
    smooth = ["--dist", "smooth:2", "--compartments", "layer", "--d-per-compartment", "6",
              "--steps", "10", "--snapshot-every", "5"]
    per_rank, single = tmp_path / "pr.h5", tmp_path / "single.h5"
    last = train_mpi(2, per_rank, idx_dir, *smooth, "--mode", "per-rank", "--check-every", "1")
    assert last["bytes_per_step"] == 4 * 12  # this rank's 6 per layer
    train_mpi(1, single, idx_dir, *smooth[:-5], "12", *smooth[-4:])
    np.testing.assert_allclose(coefficients(per_rank), coefficients(single), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(final_theta(per_rank), final_theta(single), rtol=0, atol=1e-6)
    proc = run_cli("replay", per_rank, "--verify")
    assert "verify: OK over 10 steps, 3 snapshots, max |diff| 0" in proc.stdout, proc.stdout


def test_shared_mode_two_ranks_match_one_rank(idx_dir, tmp_path):
    one = tmp_path / "one.h5"
    two = tmp_path / "two.h5"
    train_mpi(1, one, idx_dir, "--steps", "15")
    train_mpi(2, two, idx_dir, "--steps", "15")
    # same global batch, same directions: equal up to float32 summation order
    np.testing.assert_allclose(coefficients(two), coefficients(one), rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(final_theta(two), final_theta(one), rtol=0, atol=1e-5)
    assert not np.array_equal(final_theta(one), np.zeros_like(final_theta(one)))


@pytest.mark.parametrize("ranks", [2, 4])
def test_per_rank_bases_equal_single_process_with_r_times_d(ranks, idx_dir, tmp_path):
    per_rank = tmp_path / "pr.h5"
    single = tmp_path / "single.h5"
    train_mpi(ranks, per_rank, idx_dir, "--steps", "10", "--mode", "per-rank", "--d", "10")
    train_mpi(1, single, idx_dir, "--steps", "10", "--d", str(10 * ranks))
    c_pr, c_single = coefficients(per_rank), coefficients(single)
    assert c_pr.shape == c_single.shape == (10, 10 * ranks)
    np.testing.assert_allclose(c_pr, c_single, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(final_theta(per_rank), final_theta(single), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_step_traffic_per_rank_does_not_grow_with_ranks_in_shared_mode(ranks, idx_dir, tmp_path):
    """Rank 0's bytes sent and received and collective calls per step, counted at the MPI
    boundary: one reduce of the d coefficients to rank 0 and one broadcast of their mean,
    whatever R is (the allgather before made each rank receive 4·d·(R−1) bytes)."""
    last = train_mpi(ranks, tmp_path / "run.h5", idx_dir, "--steps", "8", "--d", "250",
                     "--dist", "srht", "--batch-size", "32", "--check-every", "4")
    if ranks == 1:
        expected = (1000, 0, 1)
    else:
        expected = (2 * 1000, 1000, 2)   # sent: its 250 floats and the broadcast; received: the mean
    assert (last["bytes_per_step"], last["recv_bytes_per_step"], last["calls_per_step"]) == expected


def test_dense_directions_exchange_once_per_chunk_and_srht_once_per_step(idx_dir, tmp_path):
    # gaussian in chunks of 50: five reduce + broadcast pairs, the same 1000 bytes in all
    last = train_mpi(2, tmp_path / "g.h5", idx_dir, "--steps", "4", "--d", "250")
    assert (last["bytes_per_step"], last["recv_bytes_per_step"], last["calls_per_step"]) == (
        2000, 1000, 10)
    # srht over per-layer compartments (two transform groups): held, so one pair per step
    last = train_mpi(2, tmp_path / "s.h5", idx_dir, "--steps", "4", "--d", "250", "--dist",
                     "srht", "--compartments", "layer")
    assert (last["bytes_per_step"], last["recv_bytes_per_step"], last["calls_per_step"]) == (
        2000, 1000, 2)


@pytest.mark.parametrize("ranks", [2, 4])
def test_sgd_gradient_goes_through_reduce_scatter_and_allgather(ranks, idx_dir, tmp_path):
    """The baseline's D-float gradient: each rank sums one block of D/R floats, then every rank
    gathers every block (a bandwidth-optimal allreduce, identical bits everywhere: --check-every
    1 hashes θ on every rank after every step)."""
    last = train_mpi(ranks, tmp_path / "sgd.h5", idx_dir, "--steps", "6", "--method", "sgd",
                     "--check-every", "1")
    D = 101_770
    block = -(-D // ranks)
    # handed to MPI: the padded gradient and this rank's block; filled: its block and the whole
    assert (last["bytes_per_step"], last["recv_bytes_per_step"], last["calls_per_step"]) == (
        4 * (block * ranks + block), 4 * (block + block * ranks), 2)


def test_per_rank_mode_sends_own_d_floats(idx_dir, tmp_path):
    last = train_mpi(2, tmp_path / "run.h5", idx_dir, "--steps", "8", "--mode", "per-rank", "--d", "25")
    assert last["bytes_per_step"] == 100  # each rank hands its own 25 coefficients to MPI
    assert last["recv_bytes_per_step"] == 100 and last["calls_per_step"] == 1  # and gets 25 back


def test_only_rank_zero_writes(idx_dir, tmp_path):
    out = tmp_path / "run.h5"
    train_mpi(2, out, idx_dir, "--steps", "4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5", "run.jsonl"]
    with h5py.File(out, "r") as f:
        assert int(f.attrs["world_size"]) == 2


def test_a_failing_rank_ends_the_job_without_hanging():
    t0 = time.monotonic()
    proc = mpiexec(2, sys.executable, DRIVER, "crash", timeout=60)
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr
    assert time.monotonic() - t0 < 30


def test_a_user_error_on_one_rank_ends_the_job_with_one_line(idx_dir, tmp_path):
    # MPMD launch: rank 1 cannot see the data directory (as on a node without the mount)
    cmd = [venv_bin("rbd-hpc"), "train", *TINY, "--steps", "4"]
    proc = subprocess.run([venv_bin("mpiexec"), "-n", "1", "-env", "RBD_DATA", str(idx_dir), *cmd, ":",
                           "-n", "1", "-env", "RBD_DATA", str(tmp_path / "absent"), *cmd],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2  # agreed by every rank: a clean exit, not MPI_Abort's
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbd-hpc: error: [rank 1] data directory"), lines


def test_on_every_rank_raises_the_lowest_failing_ranks_error_everywhere():
    def on_rank(comm):
        def work():
            if comm.rank in (1, 2):
                raise UserError(f"data directory /d{comm.rank} does not exist")
            return comm.rank
        try:
            return on_every_rank(comm, work)
        except AgreedError as e:
            return str(e)
    assert run_threaded(3, on_rank) == ["[rank 1] data directory /d1 does not exist"] * 3
    assert run_threaded(3, lambda comm: on_every_rank(comm, lambda: 10 * comm.rank)) == [0, 10, 20]


def test_a_failure_on_every_rank_alike_is_one_line_without_a_rank_and_agreed_errors_pass():
    def alike(comm):
        def work():
            raise UserError("--lr -1.0 must be a positive finite number")
        try:
            return on_every_rank(comm, work)
        except AgreedError as e:
            return str(e)
    assert run_threaded(3, alike) == ["--lr -1.0 must be a positive finite number"] * 3

    def missing():
        raise UserError("run file r.h5 does not exist")

    def agreed(comm):  # on_root inside the work: already raised on every rank, not re-prefixed
        try:
            return on_every_rank(comm, lambda: on_root(comm, missing))
        except AgreedError as e:
            return str(e)
    assert run_threaded(2, agreed) == ["run file r.h5 does not exist"] * 2


@pytest.mark.parametrize("args, message", [
    (["--lr", "-1"], "--lr -1.0 must be a positive finite number"),
    (["--data-dir", ""], "--data-dir must not be empty"),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
])
def test_a_bad_option_under_mpi_is_reported_once_and_writes_nothing(args, message, tmp_path):
    proc = mpiexec(2, venv_bin("rbd-hpc"), "train", *args, "--steps", "2", "--out",
                   tmp_path / "x.h5", timeout=120)
    assert proc.returncode == 2  # agreed by both ranks: no MPI_Abort, whose lines would follow
    assert proc.stderr.strip().splitlines() == [f"rbd-hpc: error: {message}"]
    assert list(tmp_path.iterdir()) == []


def test_divergence_check_names_the_rank():
    proc = mpiexec(3, sys.executable, DRIVER, "diverge", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ranks diverged after step 2: θ on rank(s) [2] differs" in proc.stdout


def test_world_size_must_match_slurm_ntasks(idx_dir):
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", "1",
                   env={"SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"})
    assert proc.returncode == 2
    assert "MPI world size 1 does not match SLURM_NTASKS=4" in proc.stderr


@pytest.mark.parametrize("variant", ["same-batch", "paper"])
def test_nes_offspring_spread_over_ranks_match_one_rank_bitwise(idx_dir, tmp_path, variant):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    args = ("--steps", "6", "--method", "nes", "--d", "12", "--nes", variant)
    train_mpi(1, one, idx_dir, *args)
    last = train_mpi(2, two, idx_dir, *args)
    # every offspring is evaluated on its whole batch (the step's, or its own with --nes
    # paper, chosen by its global index): the split changes nothing
    assert np.array_equal(coefficients(one), coefficients(two))
    assert np.array_equal(final_theta(one), final_theta(two))
    assert last["bytes_per_step"] == 4 * 6  # each rank hands its share, 6 of the 12 losses, to MPI


def test_rigl_is_data_parallel_and_identical_on_ranks(idx_dir, tmp_path):
    last = train_mpi(2, tmp_path / "rigl.h5", idx_dir, "--steps", "12", "--method", "rigl",
                     "--mask-every", "4", "--check-every", "1")
    assert last["step"] == 12
