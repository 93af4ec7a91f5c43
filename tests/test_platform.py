"""Replay across CPU kinds, and the run file's record of where its steps were trained.

Another node's CPU is simulated on this one by the switches that pick the instruction set of
torch's kernels and of MKL: ``ATEN_CPU_CAPABILITY=default`` (ATen's baseline kernels, no FMA)
and ``MKL_CBWR=COMPATIBLE`` (MKL's SSE2 code path), or ``MKL_ENABLE_INSTRUCTIONS=AVX2`` (an
AVX2 node's MKL). Training rounds differently under them (its gradients come from those
kernels); a kernel-generation-3 replay must not (kernels.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from rbd_hpc import kernels
from rbd_hpc.runlog import FORMAT_VERSION, RunFile

from conftest import run_cli

TINY = ["--val-size", "64", "--threads", "1", "--no-progress"]
OTHER_CPUS = {
    "baseline ATen, MKL's SSE2 path": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
    "an AVX2 node's MKL": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
# each: a dense distribution, and what else rounds on the way (a rate that is not a power of
# two, exact normalisation, momentum, decay, antithetic pairs, FPD's carried coordinates)
RUNS = {
    "gaussian": ["--dist", "gaussian", "--schedule", "cosine", "--lr", "0.3",
                 "--normalize", "exact", "--momentum", "0.5", "--weight-decay", "1e-4"],
    "uniform": ["--dist", "uniform", "--lr", "0.3", "--antithetic", "--schedule", "cosine"],
    "rademacher": ["--dist", "rademacher", "--lr", "0.3", "--compartments", "layer"],
    "fpd": ["--method", "fpd", "--lr", "0.3"],
    "srht": ["--dist", "srht", "--lr", "0.3", "--schedule", "cosine", "--svrg-every", "10"],
}


def _train(path, idx_dir, args, steps=30, env=None):
    proc = run_cli("train", "--data-dir", idx_dir, *TINY, "--steps", str(steps), "--d", "40",
                   "--chunk", "16", *args, "--out", path, env=env)
    assert proc.returncode == 0, proc.stderr
    return path


def _verify(path, env) -> str:
    proc = run_cli("replay", path, "--verify", env=env)
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_generation_3_replays_bitwise_on_other_instruction_sets(idx_dir, tmp_path, name):
    run = _train(tmp_path / f"{name}.h5", idx_dir, RUNS[name])
    for cpu, env in OTHER_CPUS.items():
        assert _verify(run, env) == "verify: OK over 30 steps, 2 snapshots, max |diff| 0 (1 thread)", cpu


def test_generation_2_dense_replay_depended_on_the_instruction_set(idx_dir, tmp_path):
    """Why generation 3 exists: a generation-2 gaussian run (BLAS sums, fused rate × step)
    fails --verify under another instruction set; the same run in generation 3 passes. This
    is also what makes the test above able to fail."""
    args = RUNS["gaussian"]
    old = _train(tmp_path / "g2.h5", idx_dir, [*args, "--kernels", "2"])
    assert _verify(old, None).startswith("verify: OK over 30 steps")
    failed = [run_cli("replay", old, "--verify", env=env) for env in OTHER_CPUS.values()]
    failed = [proc for proc in failed if proc.returncode == 1]
    assert failed and all(p.stdout.strip().splitlines()[-1].startswith("verify: MISMATCH")
                          for p in failed)
    # the mismatch names its likely cause: the generation, where the run was trained, this node
    with RunFile(old) as f:
        (_, trained_on), = json.loads(f.attrs["platforms"])
    note = failed[0].stdout.strip().splitlines()[-2]
    assert note.startswith("note: kernel generation 2 replays bitwise only on the CPU kind that "
                           f"trained the run ({trained_on}); this node is "), note


def test_in_order_sums_are_one_arithmetic():
    """The compiled sum, its torch reference (any device) and a NumPy loop give the same bits,
    and differ from the same sum taken in reverse order in at least one element (else the
    test is vacuous). The contrast is a NumPy loop, not a BLAS product: whether BLAS happens to
    sum in order depends on the CPU and library (on one CI machine it did, bit for bit)."""
    rng = np.random.default_rng(3)
    phi = rng.standard_normal((37, 4099)).astype(np.float32)
    c = rng.standard_normal(37).astype(np.float32)
    def summed(order):  # c_i phi_i added one row at a time, in float32, in ``order``
        total = np.zeros(4099, dtype=np.float32)
        for i in order:
            total = total + c[i] * phi[i]
        return total
    want = summed(range(37))
    import torch
    got = kernels.combine_in_order(torch.from_numpy(c), torch.from_numpy(phi)).numpy()
    ref = kernels.combine_in_order_reference(torch.from_numpy(c), torch.from_numpy(phi)).numpy()
    assert np.array_equal(got, want) and np.array_equal(ref, want)
    assert not np.array_equal(got, summed(reversed(range(37))))
    norms = kernels.row_norms(torch.from_numpy(phi)).numpy()
    assert np.array_equal(norms, np.sqrt((phi.astype(np.float64) ** 2).sum(axis=1)).astype(np.float32))


def test_the_run_file_records_where_its_steps_were_trained(idx_dir, tmp_path):
    """A new run records this node; a resume on another kind of CPU appends it at the resume
    step and prints one note saying the continuation is valid but not the uninterrupted bits;
    a resume on the same kind appends nothing; inspect lists the stretches."""
    run = _train(tmp_path / "p.h5", idx_dir, ["--dist", "gaussian"], steps=10)
    with RunFile(run) as f:
        first = json.loads(f.attrs["platforms"])
    assert len(first) == 1 and first[0][0] == 0 and "torch " in first[0][1]
    proc = run_cli("train", "--resume", run, "--steps", "20", "--no-progress",
                   "--data-dir", idx_dir, env={"ATEN_CPU_CAPABILITY": "default"})
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: the steps before")]
    assert len(notes) == 1 and "(DEFAULT)" in notes[0] and "replay --verify holds on any CPU" in notes[0]
    proc = run_cli("train", "--resume", run, "--steps", "30", "--no-progress", "--data-dir", idx_dir,
                   env={"ATEN_CPU_CAPABILITY": "default"})
    assert proc.returncode == 0 and "note: the steps before" not in proc.stdout
    with RunFile(run) as f:
        stretches = json.loads(f.attrs["platforms"])
    assert [at for at, _ in stretches] == [0, 10] and stretches[0] == first[0]
    assert stretches[1][1].endswith("(DEFAULT), " + first[0][1].rsplit(", ", 1)[1])
    inspect = run_cli("inspect", run).stdout
    assert f"trained on    {first[0][1]} (from step 0); {stretches[1][1]} (from step 10)" in inspect
    assert _verify(run, None) == "verify: OK over 30 steps, 4 snapshots, max |diff| 0 (1 thread)"


def test_a_file_without_a_record_resumes_and_says_what_is_not_known(idx_dir, tmp_path):
    """A damaged record (or a format-4 file, test_config's golden file) has no platform list:
    inspect says which of the two it is, a resume names this node and starts the list with an
    unknown first stretch."""
    import h5py
    run = _train(tmp_path / "old.h5", idx_dir, ["--dist", "srht"], steps=5)
    damaged = [  # (the attribute written, None: deleted; what inspect says)
        ("{not json", "unreadable (the platforms attribute is damaged: not JSON, Expecting "
                      "property name enclosed in double quotes: line 1 column 2 (char 1))"),
        ("[[0, 7]]", "unreadable (the platforms attribute is damaged: not a non-empty list of "
                     "[first step, platform] pairs)"),
        (None, f"not recorded (the platforms attribute is missing from this format-{FORMAT_VERSION} "
               "file)"),
    ]
    for value, says in damaged:
        with h5py.File(run, "r+") as f:
            if value is None:
                del f.attrs["platforms"]
            else:
                f.attrs["platforms"] = value
        assert f"trained on    {says}\n" in run_cli("inspect", run).stdout, value
    proc = run_cli("train", "--resume", run, "--steps", "10", "--no-progress", "--data-dir", idx_dir)
    assert proc.returncode == 0, proc.stderr
    assert "note: where the steps before 5 were trained is not recorded" in proc.stdout
    with RunFile(run) as f:
        stretches = json.loads(f.attrs["platforms"])
    assert [s for s, _ in stretches] == [0, 5] and stretches[0][1] == "unknown"
    assert _verify(run, None) == "verify: OK over 10 steps, 3 snapshots, max |diff| 0 (1 thread)"
