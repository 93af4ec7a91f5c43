"""jobs/results.py: tables generated from committed metrics, selection on validation only."""
import json
import sys
from pathlib import Path

import pytest

from rbd_hpc.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "jobs"))
import results  # noqa: E402


def write_run(d: Path, name: str, val: float, test: float, epoch: float = 100,
              peak: float | None = None, **fields):
    """Rows at epochs 1, 2, (50: validation ``peak``), epoch − 0.5 and ``epoch``."""
    cfg = TrainConfig.from_preset("fc-fmnist", **fields)
    rows = [{"epoch": e, "val_acc": 0.1, "test_acc": 0.1} for e in (1, 2)]
    rows += [{"epoch": 50, "val_acc": peak, "test_acc": 0.1}] if peak is not None else []
    rows += [{"epoch": epoch - 0.5, "val_acc": val - 0.02, "test_acc": 0.1}] if epoch > 12 else []
    rows.append({"epoch": epoch, "val_acc": val, "test_acc": test})
    (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / f"{name}.config.json").write_text(cfg.to_json())


def error_line(capsys, call, *args) -> str:
    """Call an entry point of jobs/results.py that must refuse: it exits with status 2 and
    prints exactly one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as e:
        call(*args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def docs(tmp_path):
    md, readme = tmp_path / "results.md", tmp_path / "README.md"
    md.write_text("# R\n<!-- results:table-a -->\nold\n<!-- /results:table-a -->\nmid\n"
                  "<!-- results:cells -->\n<!-- /results:cells -->\n"
                  "<!-- results:table-b -->\n<!-- /results:table-b -->\n"
                  "<!-- results:agreement -->\n<!-- /results:agreement -->\n"
                  "<!-- results:screening -->\n<!-- /results:screening -->\n"
                  "<!-- results:kernels -->\n<!-- /results:kernels -->\nend\n")
    readme.write_text("x\n<!-- results:summary -->\nold\n<!-- /results:summary -->\ny\n"
                      "<!-- results:summary-b -->\n<!-- /results:summary-b -->\n")
    return tmp_path, md, readme


def test_tables_are_generated_with_mean_std_deviations_and_validation_selection(docs):
    d, md, readme = docs
    for s, (v, t, peak) in enumerate([(0.84, 0.83, None), (0.86, 0.85, 0.90), (0.85, 0.87, 0.80)]):
        write_run(d, f"sgd-s{s}", v, t, peak=peak, protocol="paper", method="sgd", seed=s)
    write_run(d, "rbd-s0", 0.80, 0.79, epoch=40, protocol="paper", method="rbd", dist="srht")
    write_run(d, "a-s0", 0.90, 0.70, method="rbd")      # best validation: chosen
    write_run(d, "b-s0", 0.88, 0.99, method="rbd")      # best test: never read
    write_run(d, "g-s0", 0.12, 0.5, epoch=2, protocol="paper", method="rbd")  # Gaussian, 2 epochs
    write_run(d, "c-s0", 0.95, 0.95, epoch=50, method="rbd")  # best validation, unfinished
    for s, v in enumerate([0.85, 0.87]):                     # unlabelled: named by its deviations
        write_run(d, f"p-s{s}", v, 0.8 + s / 100, protocol="paper", method="rbd", dist="srht",
                  augment=False, schedule="cosine", seed=s)
    manifest = d / "m.yaml"
    manifest.write_text(
        "epochs: 100\ntable_a:\n"
        "  - {model: fc, method: sgd, runs: [sgd-s0, sgd-s1, sgd-s2]}\n"
        "  - {model: fc, method: rbd, runs: [rbd-s0]}\n"
        "  - {model: cnn, method: rbd, note: not run yet}\n"
        "table_b:\n  - name: G\n    model: fc\n    method: rbd\n    candidates:\n"
        "      - {label: A, runs: [a-s0]}\n      - {label: B, runs: [b-s0]}\n"
        "      - {label: C, runs: [c-s0]}\n"
        "  - name: P\n    model: fc\n    method: rbd\n    candidates:\n"
        "      - {runs: [p-s0, p-s1]}\n      - {runs: [sgd-s0, sgd-s1, sgd-s2]}\n"
        "  - {name: Q, model: fc, method: rbd, candidates: [{runs: [c-s0]}]}\n"
        "  - {name: R, model: fc, method: rbd, candidates: [{label: AC, runs: [a-s0, c-s0]}]}\n"
        "  - {name: S, model: fc, method: rbd, seeds: 2, candidates: [{label: A1, runs: [a-s0]},\n"
        "     {label: P2, runs: [p-s0, p-s1]}]}\n"
        "  - {name: T, model: fc, method: rbd, seeds: 3, candidates: [{label: A1, runs: [a-s0]}]}\n"
        "agreement:\n  - {label: FC RBD, gaussian: [g-s0], srht: [rbd-s0]}\n")
    made = results.tables(manifest, d, md, readme)
    a = made["table-a"].splitlines()
    # mean ± sample std over the three seeds: val 85.00 ± 1.00, test 85.00 ± 2.00
    # the mean over each run's last ten epochs (99.5 and 100; not 1, 2 or 50): one point lower;
    # each run's best epoch: 84, 90 (its epoch 50) and 85 (its 80% at epoch 50 is not its best)
    assert a[2] == ("| FC-FMNIST | SGD | none | 0, 1, 2 | 100 | 85.00 ± 1.00 | 84.00 ± 1.00 | "
                    "86.33 ± 3.21 | 85.00 ± 2.00 | 87.32 ± 0.21 | -11.0 |")
    assert a[3] == ("| FC-FMNIST | RBD | --dist srht (paper: gaussian) | 0 | 40 (unfinished) | "
                    "80.00 ± — | 79.00 ± — | 80.00 ± — | 79.00 ± — | 85.65 ± 0.2 | "
                    "— (epoch 40 of 100) |")  # not scored against a 100-epoch figure
    assert a[4] == ("| CNN-FMNIST | RBD | not run yet | — | — | — | — | — | — | 85.56 ± 0.1 "
                    "| — |")
    b = made["table-b"].splitlines()
    assert b[2] == "| G | **A** (chosen) | 0 | 100 | 90.00 ± — | **70.00 ± —** |"
    assert b[3] == "| G | B | 0 | 100 | 88.00 ± — | not read |"
    # an unfinished candidate is listed but never chosen, whatever its validation score
    assert b[4] == "| G | C | 0 | 50 (unfinished) | 95.00 ± — | not read |"
    # a candidate without a label is named by everything its stored config changes
    assert b[5] == ("| P | **--augment off (paper: on); --schedule cosine (paper: constant); "
                    "--dist srht (paper: gaussian)** (chosen) | 0, 1 | 100 | 86.00 ± 1.41 | "
                    "**80.50 ± 0.71** |")
    assert b[6] == ("| P | none (the paper's protocol) | 0, 1, 2 | 100 | 85.00 ± 1.00 | "
                    "not read |")
    # seeds at different epochs are read at the last epoch all reached (50): a-s0 at its epoch
    # 2 (10%, its last row up to 50) with c-s0 at 50 (95%), never a-s0's final 90%
    assert b[8] == "| R | AC | 0, 0 | 50 (unfinished) | 52.50 ± 60.10 | not read |"
    # a group asking for two seeds never chooses a one-seed screening run, whatever its score
    assert b[9] == "| S | A1 (1 of 2 seeds) | 0 | 100 | 90.00 ± — | not read |"
    assert b[10] == "| S | **P2** (chosen) | 0, 1 | 100 | 86.00 ± 1.41 | **80.50 ± 0.71** |"
    assert b[11] == "| T | A1 (1 of 3 seeds) | 0 | 100 | 90.00 ± — | not read |"
    # srht against Gaussian at the last epoch both reached (2): 10.00 against 12.00; over
    # the epochs up to it (1 and 2) 10.00 against 11.00
    assert made["agreement"].splitlines()[2] == (
        "| FC RBD | 2 | 1: 12.00 ± — | 1: 10.00 ± — | -2.00 | -1.00 |")
    text = md.read_text()
    assert "old" not in text and made["table-a"] in text and text.endswith("end\n")
    assert made["summary"] in readme.read_text() and "FC-FMNIST SGD | 3 |" in made["summary"]
    # the README's Table B lines: each group's chosen candidate, never the unfinished C
    assert made["summary-b"].splitlines()[2:] == [
        "| G | A | 1 | 90.00 ± — | 70.00 ± — |",
        "| P | --augment off (paper: on); --schedule cosine (paper: constant); --dist srht "
        "(paper: gaussian) | 2 | 86.00 ± 1.41 | 80.50 ± 0.71 |",
        "| Q | none finished yet | — | — | — |", "| R | none finished yet | — | — | — |",
        "| S | P2 | 2 | 86.00 ± 1.41 | 80.50 ± 0.71 |",
        "| T | none finished with 3 seeds yet | — | — | — |"]
    assert made["summary-b"] in readme.read_text()


def test_each_cell_is_scored_in_the_papers_sigma_with_and_without_augmentation(docs):
    d, md, readme = docs
    # FC SGD (paper 87.32 ± 0.21): with augmentation 85.00 final, 84.00 over the last ten
    # epochs (99.5 and 100), 86.33 at the best epochs; without it 87.30, 87.80 and 86.90:
    # 87.33 final and best (+0.06 σ), 86.33 over the last ten (−4.70 σ)
    for s, (v, peak) in enumerate([(0.84, None), (0.86, 0.90), (0.85, 0.80)]):
        write_run(d, f"sgd-s{s}", v, 0.5, peak=peak, protocol="paper", method="sgd", seed=s)
    for s, v in enumerate([0.8730, 0.8780, 0.8690]):
        write_run(d, f"plain-s{s}", v, 0.5, protocol="paper", method="sgd", augment=False,
                  seed=s)
    # FC RBD (paper 85.65 ± 0.2): one srht seed at 85.25 (−2.0 σ: within two σ; its last
    # ten epochs 84.25, −7.0 σ), one unfinished
    # plain seed; FC FPD: a row without runs
    write_run(d, "rbd-s0", 0.8525, 0.5, protocol="paper", method="rbd", dist="srht")
    write_run(d, "rbd-plain-s0", 0.86, 0.5, epoch=40, protocol="paper", method="rbd",
              dist="srht", augment=False)
    manifest = d / "m.yaml"
    manifest.write_text(
        "table_a:\n"
        "  - {model: fc, method: sgd, runs: [plain-s0, plain-s1, plain-s2], without_augmentation: true}\n"
        "  - {model: fc, method: sgd, summary: true, runs: [sgd-s0, sgd-s1, sgd-s2], reading: why}\n"
        "  - {model: fc, method: rbd, runs: [rbd-s0]}\n"
        "  - {model: fc, method: rbd, runs: [rbd-plain-s0], without_augmentation: true}\n"
        "  - {model: fc, method: fpd, note: not run yet}\n")
    made = results.tables(manifest, d, md, readme)
    assert made["cells"].splitlines()[2:] == [
        # the summary row is the protocol's, whatever its place; ✓ within two σ as printed
        "| FC-FMNIST SGD | 87.32 ± 0.21 | none, 3 seeds | -11.0 / -15.8 / -4.7 | "
        "--augment off, 3 seeds | +0.1 ✓ / -4.7 / +0.1 ✓ | why |",
        # without a summary mark the cell's first row is the protocol's; an unfinished row is
        # not scored against the paper's 100-epoch figure
        "| FC-FMNIST RBD | 85.65 ± 0.2 | --dist srht, 1 seed | -2.0 ✓ / -7.0 / -2.0 ✓ | "
        "--augment off, --dist srht, 1 seed | — (epoch 40 of 100) |  |",
        "| FC-FMNIST FPD | 77.3 ± 0.29 | not run | — | not run | — |  |"]
    assert made["cells"] in md.read_text()


@pytest.mark.parametrize("rows,fragment", [
    ("  - {model: fc, method: sgd, runs: [a-s0], without_augmentation: true}\n",
     "table_a row ['a-s0']: marked without_augmentation, but its runs augment"),
    ("  - {model: fc, method: rbd, runs: [b-s0], without_augmentation: true}\n" * 2,
     "table_a marks 2 fc rbd rows without_augmentation; mark the one the cells table reads"),
    ("  - {model: fc, method: rbd, runs: [b-s0], reading: [x]}\n",
     "table_a row 1: reading ['x'] is not text"),
])
def test_a_wrong_cell_mark_is_one_error_line(docs, capsys, rows, fragment):
    d, md, readme = docs
    write_run(d, "a-s0", 0.90, 0.70, protocol="paper", method="sgd")
    write_run(d, "b-s0", 0.90, 0.70, protocol="paper", method="rbd", augment=False)
    (d / "m.yaml").write_text("table_a:\n" + rows)
    before = md.read_text(), readme.read_text()
    err = error_line(capsys, results.tables, d / "m.yaml", d, md, readme)
    assert fragment in err, err
    assert (md.read_text(), readme.read_text()) == before  # nothing written


def test_screening_reads_every_run_at_one_epoch_and_never_prints_test(docs):
    d, md, readme = docs
    runs = {"short": [1, 2, 3], "long": [1, 2, 3, 4, 50, 100], "cut": [1], "nan": [],
            "noloss": [3]}
    for name, epochs in runs.items():
        cfg = TrainConfig.from_preset("cnn-fmnist", protocol="paper", method="rbd", dist="srht",
                                      momentum=0.9 if name != "long" else 0.0)
        rows = [{"epoch": e, "train_loss": 1 / e, "val_acc": 0.5 + e / 1000, "test_acc": 0.123}
                for e in epochs]
        if name == "noloss":
            del rows[0]["train_loss"]
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / f"{name}.config.json").write_text(cfg.to_json())
    manifest = d / "m.yaml"
    manifest.write_text("table_a: []\nscreening:\n  - name: S\n    epoch: 3\n"
                        "    runs: [short, long, cut, nan, noloss]\n"
                        "    notes: {nan: loss became nan at step 9}\n")
    made = results.tables(manifest, d, md, readme)["screening"].splitlines()
    mom = "--dist srht (paper: gaussian); --momentum 0.9 (paper: 0)"
    # a 100-epoch run is read at the screening's epoch, not at its end
    assert made[2:] == [
        f"| S | short | {mom} | 0 | 3 | 0.3333 | 50.30 |",
        "|  | long | --dist srht (paper: gaussian) | 0 | 3 | 0.3333 | 50.30 |",
        f"|  | cut | {mom} | 0 | — (last epoch finished: 1) | — | — |",
        f"|  | nan | {mom} | 0 | — (no epoch finished) (loss became nan at step 9) | — | — |",
        f"|  | noloss | {mom} | 0 | 3 | — | 50.30 |"]
    assert "12.3" not in md.read_text()                  # test accuracy is never printed


def test_every_run_named_is_listed_once_under_the_kernel_generation_it_stored(docs, capsys):
    d, md, readme = docs
    write_run(d, "a2", 0.8, 0.8, protocol="paper", method="rbd", kernels=2)
    write_run(d, "b3", 0.8, 0.8, protocol="paper", method="rbd", kernels=3)
    write_run(d, "c2", 0.8, 0.8, protocol="paper", method="rbd", dist="srht", kernels=2)
    write_run(d, "s3", 0.8, 0.8, epoch=3, method="rbd", kernels=3)
    spec = {"table_a": [{"model": "fc", "method": "rbd", "runs": ["a2", "b3"]}],
            "table_b": [{"name": "G", "model": "fc", "method": "rbd", "candidates": [
                {"runs": ["b3"]}, {"legacy": ["srht, lr 1", "srht, lr 2"]},
                {"legacy": ["srht, lr 1"]}]}],
            "agreement": [{"label": "FC", "gaussian": ["a2"], "srht": ["c2"]}],
            "screening": [{"name": "S", "epoch": 3, "runs": ["s3", "a2"]}]}
    assert results.kernel_generations(spec, d).splitlines() == [
        "| kernel generation | runs | run names |", "|---:|---:|---|",
        "| 1 | 2 | rbd-hpc 0.1's runs (Table B's `legacy` candidates, table1_100epochs.csv) |",
        "| 2 | 2 | a2, c2 |",
        "| 3 | 2 | b3, s3 |"]
    del spec["table_b"]  # no legacy candidate: no generation-1 row
    assert results.kernel_generations(spec, d).splitlines()[2] == "| 2 | 2 | a2, c2 |"
    config = json.loads((d / "b3.config.json").read_text())
    del config["kernels"]  # a config written by hand, or cut short
    (d / "b3.config.json").write_text(json.dumps(config))
    err = error_line(capsys, results.kernel_generations, spec, d)
    assert err.startswith("results: error: run b3: ")
    assert "names no kernel generation" in err
    text = (d / "a2.config.json").read_text()
    (d / "a2.config.json").write_text(text[: len(text) // 2])  # a file cut short
    err = error_line(capsys, results.kernel_generations, spec, d)
    assert err.startswith("results: error: run a2: ")
    assert "is not valid JSON" in err


def test_a_missing_run_is_one_error_line(docs, capsys):
    d, md, readme = docs
    manifest = d / "m.yaml"
    manifest.write_text("table_a:\n  - {model: fc, method: sgd, runs: [nowhere]}\n")
    err = error_line(capsys, results.tables, manifest, d, md, readme)
    assert "run nowhere:" in err and "collect" in err


@pytest.mark.parametrize("seeds", ["3", 0, 2.5, "true"])
def test_a_bad_seeds_count_is_one_error_line(docs, capsys, seeds):
    d, md, readme = docs
    write_run(d, "a-s0", 0.90, 0.70, method="rbd")
    manifest = d / "m.yaml"
    manifest.write_text(f"table_a: []\ntable_b:\n  - {{name: G, model: fc, method: rbd, seeds: {seeds!r}, "
                        "candidates: [{runs: [a-s0]}]}\n")
    before = md.read_text()
    err = error_line(capsys, results.tables, manifest, d, md, readme)
    assert "group 'G': seeds" in err and "≥ 1" in err
    assert md.read_text() == before                      # nothing written


@pytest.mark.parametrize("text", ["", "table_b: []\n", "- a list\n"])
def test_a_manifest_without_table_a_is_one_error_line(docs, capsys, text):
    d, md, readme = docs
    (d / "m.yaml").write_text(text)
    before = md.read_text()
    err = error_line(capsys, results.tables, d / "m.yaml", d, md, readme)
    assert "no table_a list" in err
    assert md.read_text() == before


@pytest.mark.parametrize("text,fragment", [
    ("table_a: [1\n", "is not valid YAML: expected ',' or ']'"),
    ("table_a:\n  - {model: cnm, method: sgd}\n",
     "table_a row 1: model 'cnm' is not valid; choose one of: fc, cnn"),
    ("table_a:\n  - {model: fc, method: RBD, runs: [a-s0]}\n",
     "method 'RBD' is not valid; choose one of: nes, fpd, rbd, sgd"),
    ("table_a:\n  - {model: fc, method: sgd, runs: a-s0}\n",
     "table_a row 1 runs: 'a-s0' is not a list of run names"),
    ("epochs: x\ntable_a: []\n", "epochs 'x' is not a whole number ≥ 1"),
    ("table_a: []\ntable_b: 3\n", "table_b 3 is not a list"),
    ("table_a: []\ntable_b:\n  - {model: fc, method: rbd, candidates: [{runs: [a-s0]}]}\n",
     "table_b group 1 has no name"),
    ("table_a: []\ntable_b:\n  - {name: G, model: fc, method: rbd, candidates: []}\n",
     "group 'G': no candidates list"),
    ("table_a: []\ntable_b:\n  - {name: G, model: fc, method: rbd, "
     "candidates: [{runs: [a-s0], legacy: [x]}]}\n", "candidate 1: give either runs"),
    ("table_a: []\nagreement:\n  - {srht: [a-s0]}\n", "agreement row 1: {'srht': ['a-s0']} has no label"),
    ("table_a: []\nscreening:\n  - {runs: [a-s0], epoch: 3}\n", "screening group 1 has no name"),
    ("table_a: []\nscreening:\n  - {name: S, runs: [a-s0], epoch: 0}\n",
     "screening group 1: epoch 0 is not a positive number"),
    ("table_a: []\nscreening:\n  - {name: S, runs: a-s0, epoch: 3}\n",
     "screening group 1 runs: 'a-s0' is not a list of run names"),
    ("table_a: []\nscreening:\n  - {name: S, runs: [a-s0], epoch: 3, notes: [x]}\n",
     "notes ['x'] is not a mapping of run name to note"),
])
def test_a_mistake_in_the_manifest_is_one_error_line_naming_it(docs, capsys, text, fragment):
    """Each was a traceback (KeyError, TypeError, yaml's ParserError) or a wrong table."""
    d, md, readme = docs
    write_run(d, "a-s0", 0.90, 0.70, method="rbd")
    (d / "m.yaml").write_text(text)
    before = md.read_text(), readme.read_text()
    err = error_line(capsys, results.tables, d / "m.yaml", d, md, readme)
    assert fragment in err, err
    assert (md.read_text(), readme.read_text()) == before  # nothing written


def test_collect_checks_every_run_before_it_copies_one(tmp_path, capsys):
    rundir, metrics = tmp_path / "runs", tmp_path / "metrics"
    rundir.mkdir()
    for name in ("a", "b"):
        (rundir / f"{name}.h5").write_bytes(b"")
    (rundir / "a.jsonl").write_text("{}\n")
    err = error_line(capsys, results.collect, rundir, ["a", "b"], metrics)
    assert err == f"results: error: run b: {rundir}/b.jsonl is missing (collect copies the " \
                  "metrics a run wrote with --metrics b.jsonl)"
    assert not metrics.exists()  # a's files were not copied either


def test_the_committed_tables_are_what_the_manifest_generates(tmp_path):
    """docs/results.md and README.md hold exactly what `jobs/results.py tables` writes."""
    md, readme = tmp_path / "results.md", tmp_path / "README.md"
    md.write_text((ROOT / "docs" / "results.md").read_text())
    readme.write_text((ROOT / "README.md").read_text())
    results.tables(results.MANIFEST, results.METRICS, md, readme)
    assert md.read_text() == (ROOT / "docs" / "results.md").read_text()
    assert readme.read_text() == (ROOT / "README.md").read_text()
