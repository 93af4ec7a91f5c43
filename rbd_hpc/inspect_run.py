"""``rbd-hpc inspect``: what a run file holds and what it costs on disk."""
from __future__ import annotations

import dataclasses
import json
import statistics

from .compartments import parse_rate_scales
from .runlog import RunFile, platform_record

_EPOCH_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc",
                  "ms_per_step", "bytes_per_step", "recv_bytes_per_step", "calls_per_step")
# rank 0's traffic per training step: bytes handed to MPI, bytes received, collective calls
_HEADINGS = {"bytes_per_step": "sent_B", "recv_bytes_per_step": "recv_B", "calls_per_step": "calls"}
_COUNTS = ("epoch", "step", "bytes_per_step", "recv_bytes_per_step", "calls_per_step")


def compartment_line(cfg: dict, compartments: list[dict], mode: str, ranks: int) -> str:
    """Each compartment's directions per step against its size, e.g. ``fc1 21/100,480``, and
    its rate where --lr-scale changes it (``at 3η``)."""
    rule = (f"{cfg['d_per_compartment']} each" if cfg.get("d_per_compartment")
            else cfg.get("allocate", "size"))
    times = f"×{ranks}" if mode == "per-rank" and ranks > 1 else ""
    scales = parse_rate_scales(cfg["lr_scale"]) if cfg.get("lr_scale") else {}
    parts = [f"{c['name']} {c['d']}{times}/{c['stop'] - c['start']:,}"
             + (f" at {scales[c['name']]:g}η" if c["name"] in scales else "") for c in compartments]
    return f"compartments  {cfg.get('compartments', 'network')} ({rule}): " + ", ".join(parts)


def without_test(row: dict) -> dict:
    """A metrics row less its test scores (--hide-test)."""
    return {k: v for k, v in row.items() if not k.startswith("test_")}


def describe(path: str, hide_test: bool = False) -> tuple[str, dict]:
    with RunFile(path) as run:
        config = run.config()
        cfg = dataclasses.asdict(config)
        D = int(run.layout["offsets"][-1])
        size = run.size_on_disk()
        n_coef = int(run.attrs["n_coefficients"])
        coef = run.f["steps"].get("coefficients")
        coef_bytes = coef.id.get_storage_size() if coef is not None else 0
        snaps = [int(s) for s in run.snapshot_steps()]
        metrics = [without_test(r) for r in run.metrics()] if hide_test else run.metrics()
        per_step = coef_bytes / run.committed if run.committed else 0.0
        platforms, platforms_problem = platform_record(run)
        info = {
            "file": str(run.path), "format_version": run.version,
            "method": str(run.attrs["method"]), "mode": str(run.attrs["mode"]),
            "world_size": int(run.attrs["world_size"]), "device_type": str(run.attrs["device_type"]),
            "package_version": str(run.attrs["package_version"]),
            "torch_version": str(run.attrs["torch_version"]),
            "parameters": D, "coefficients_per_step": n_coef, "committed_steps": run.committed,
            "size_on_disk": size, "coefficient_bytes_per_step": per_step,
            "full_checkpoint_bytes": 4 * D, "snapshots": snaps, "replayable": run.replayable,
            "final_metrics": metrics[-1] if metrics else None, "config": cfg,
            "protocol": config.protocol, "deviations": config.deviations(),
            "platforms": platforms, "platforms_problem": platforms_problem,
        }
    final = info["final_metrics"]
    lines = [
        f"run file      {info['file']} (format {info['format_version']}, rbd-hpc "
        f"{info['package_version']}, torch {info['torch_version']})",
        f"method        {info['method']} ({info['mode']} mode, {info['world_size']} rank(s), "
        f"{info['device_type']}), {cfg['model']}-{cfg['dataset']}, seed {cfg['seed']}"
        + (f", momentum {cfg['momentum']:g} (velocity saved in snapshots)" if cfg.get("momentum")
           else "")
        + (f", weight decay {cfg['weight_decay']:g}" if cfg.get("weight_decay") else "")
        + (f", svrg every {cfg['svrg_every']} steps" if cfg.get("svrg_every") else ""),
        f"parameters    D = {D:,}; {n_coef} coefficients per step"
        + (f" ({cfg['dist']} directions, kernel generation {cfg['kernels']})" if n_coef else ""),
        f"protocol      {info['protocol']}" + (
            (": deviations " + "; ".join(info["deviations"]) if info["deviations"]
             else ": the paper's settings, no deviation") if info["protocol"] == "paper"
            else " (rbd-hpc's own settings)"),
        *([compartment_line(cfg, run.layout["compartments"], info["mode"], info["world_size"])]
          if run.layout.get("compartments") else []),
        f"committed     {run.committed} steps",
        "trained on    " + ("; ".join(f"{p} (from step {at})" for at, p in info["platforms"])
                            if info["platforms"] else info["platforms_problem"]),
        f"size on disk  {size:,} bytes",
        f"per step      {per_step:,.0f} bytes stored vs {4 * D:,} for a full checkpoint "
        f"({per_step / (4 * D):.2%})" if run.committed and n_coef else
        f"per step      no coefficients (not replayable); full checkpoint {4 * D:,} bytes",
        f"snapshots     {len(snaps)} at steps {snaps if len(snaps) <= 12 else snaps[:6] + ['…'] + snaps[-3:]}",
        "final metrics " + (", ".join(f"{k} {v:.4g}" for k, v in final.items()) if final else "none yet"),
        "config        " + json.dumps(cfg, sort_keys=True),
    ]
    return "\n".join(lines), info


def epoch_table(metrics: list[dict], last: int = 10, hide_test: bool = False) -> str:
    """One line per evaluation, then where validation peaked and the mean test accuracy of the
    ``last`` evaluations (a single final epoch moves by tenths of a point from epoch to epoch);
    ``hide_test``: no test column, and the mean validation accuracy of the ``last`` instead."""
    if not metrics:
        return "no epochs evaluated yet"
    columns = [c for c in _EPOCH_COLUMNS if not (hide_test and c.startswith("test_"))]
    head = " ".join(f"{_HEADINGS.get(c, c):>10}" for c in columns)
    rows = [" ".join(f"{r[c]:>10g}" if c in _COUNTS else f"{r[c]:>10.4f}"
                     for c in columns) for r in metrics]
    best = max(metrics, key=lambda r: r["val_acc"])
    score = "val_acc" if hide_test else "test_acc"
    tail = [r[score] for r in metrics[-last:]]
    summary = (f"best val_acc {best['val_acc']:.4f} at epoch {best['epoch']:g}"
               + ("" if hide_test else f" (test_acc there {best['test_acc']:.4f})")
               + f"; {score} over the last {len(tail)}: mean "
               f"{statistics.fmean(tail):.4f}, range {min(tail):.4f}–{max(tail):.4f}")
    return "\n".join([head, *rows, summary])


def describe_epochs(path: str, hide_test: bool = False) -> str:
    with RunFile(path) as run:
        return epoch_table(run.metrics(), hide_test=hide_test)
