"""`boxseg plot`: the training curves of one or several runs on shared axes (loss, learning
rate, val mIoU, read from RUN/metrics.jsonl), or an eval's confusion matrix (from eval
--json), as PNG files. matplotlib (the `plot` extra) draws them with its Agg backend, so no
display is needed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from boxseg.errors import BoxsegError
from boxseg.io import atomic_write_bytes, read_text
from boxseg.outputs import is_png_with, output_file


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise BoxsegError("boxseg plot needs matplotlib: pip install 'boxseg[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run: Path) -> list[dict]:
    """RUN/metrics.jsonl as records (training steps, and the end-of-run val record)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise BoxsegError(f"{path}: no metrics (is {run} a boxseg run directory?)")
    records = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BoxsegError(f"{path}: line {n} is not JSON ({e.msg})") from e
    return records


SOFTWARE = "boxseg plot"  # in every PNG written here: what `plot` may replace at its --out


def check_plot_out(out: Path) -> None:
    """The --out PNG: a new file, or one `boxseg plot` wrote (a run directory is a fine place:
    what is there is never replaced)."""
    output_file(out, "--out", is_png_with(SOFTWARE))


def _save(fig, out: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": SOFTWARE})
    atomic_write_bytes(Path(out), buf.getvalue())


def plot_runs(runs: list[Path], out: Path, smooth: int = 1) -> int:
    """Loss (with its F and W parts as thin lines), learning rate and, where runs were
    scored, val mIoU against the step, one colour per run; returns the number of panels.
    `smooth`: moving average over this many logged steps (loss only)."""
    plt = _pyplot()
    data = {str(run): read_metrics(run) for run in runs}
    short = [Path(run).name for run in runs]  # run names, or paths where names repeat
    labels = dict(zip(data, short if len(set(short)) == len(short) else data, strict=True))
    last = max((r["step"] for records in data.values() for r in records), default=1)
    has_val = any("val_miou" in r for records in data.values() for r in records)
    panels = 3 if has_val else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
    for k, (name, records) in enumerate(data.items()):
        colour = f"C{k % 10}"
        steps = [r for r in records if "loss" in r]
        x = np.array([r["step"] for r in steps])
        dot = "o" if len(steps) < 3 else None  # a run of a step or two: points, not lines
        for key, width in (("loss", 1.6), ("loss_f", 0.7), ("loss_w", 0.7)):
            y, xs = np.array([r.get(key, np.nan) for r in steps], float), x
            if len(y) and not np.isnan(y).all():
                if smooth > 1 and len(y) >= smooth:  # a trailing mean: no edge effects
                    y, xs = np.convolve(y, np.ones(smooth) / smooth, mode="valid"), x[smooth - 1 :]
                style = "-" if key == "loss" else (":" if key == "loss_f" else "--")
                axes[0].plot(
                    xs,
                    y,
                    style,
                    color=colour,
                    lw=width,
                    marker=dot,
                    label=labels[name] if key == "loss" else None,
                )
        axes[1].plot(x, [r.get("lr", np.nan) for r in steps], color=colour, marker=dot)
        if has_val:
            val = [r for r in records if "val_miou" in r]
            axes[2].plot([r["step"] for r in val], [r["val_miou"] for r in val], "o-", color=colour)
    axes[0].set(title="loss (dotted: F, dashed: W)", xlabel="step", yscale="log")
    axes[1].set(title="learning rate", xlabel="step")
    if has_val:
        axes[2].set(title="val mIoU %", xlabel="step", xlim=(0, last * 1.05))
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    _save(fig, out)
    plt.close(fig)
    return panels


def plot_confusion(eval_json: Path, out: Path) -> None:
    """The confusion matrix of an eval --json report, each row (true class) normalised to
    sum 1, with the class names and the per-class IoU."""
    plt = _pyplot()
    try:
        report = json.loads(read_text(eval_json))
        conf = np.asarray(report["confusion"], float)
        names = list(report["per_class_iou"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BoxsegError(f"{eval_json}: not an eval --json report ({e})") from e
    if conf.shape != (len(names), len(names)):
        raise BoxsegError(f"{eval_json}: a {conf.shape} confusion matrix for {len(names)} classes")
    rows = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    iou = report["per_class_iou"]
    labels = [f"{n} ({iou[n]:.0f})" if iou[n] is not None else n for n in names]
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), labels, fontsize=7)
    if len(names) <= 30:  # the share of each true class, in its cell
        for i in range(len(names)):
            for j in range(len(names)):
                if conf[i].sum():
                    ax.text(
                        j,
                        i,
                        f"{100 * rows[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if rows[i, j] > 0.5 else "black",
                    )
    what = " ".join(str(report[k]) for k in ("model", "split") if report.get(k))
    ax.set(
        xlabel="predicted",
        ylabel="true (IoU %)",
        title=f"{what}\nmIoU {report.get('miou', float('nan')):.2f} (cells: % of the row)",
    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, out)
    plt.close(fig)
