"""Figures drawn with matplotlib from the points curves.Curves gathers from a run's metrics.jsonl.

`write_loss_plot(run_dir, curves)` redraws RUN_DIR/loss.png after each evaluation, from the curves
the training loop keeps (metrics.jsonl is not read again); report.py embeds the same figures in its
HTML page. The figures draw what curves.Curves keeps: at most curves.MAX_POINTS train and
validation points, however long the run. matplotlib's object API (Figure, no pyplot) is used, so
no display or global state is involved.

Scales: the loss axis is logarithmic when the loss spans more than a factor 1.5 (the early drop
from ln(vocab) would otherwise flatten the rest); the tokens axis is logarithmic when it spans
more than a factor 10, which spreads out the first few hundred steps where most of the learning
shows. The untrained model's validation loss (the evaluation at step 0) is drawn as a reference
line on both panels.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

from trickster.atomic import replace_file
from trickster.observe.curves import Curves

LOSS_TICKS = (0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 15, 20)


def loss_figure(c: Curves, title: str = "") -> Figure | None:
    """Train and validation loss against steps (left) and tokens seen (right); None if empty."""
    if not c.train_loss and not c.val_loss:
        return None
    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    by_step, by_tokens = fig.subplots(1, 2)
    val_tokens = [(t, v) for t, v in zip(c.val_tokens, c.val_loss, strict=True) if t]
    vt, vl = [t for t, _ in val_tokens], [v for _, v in val_tokens]
    panels = (
        (by_step, c.train_step, c.train_loss, c.val_step, c.val_loss, "step"),
        (by_tokens, c.train_tokens, c.train_loss, vt, vl, "tokens seen"),
    )
    for ax, tx, ty, vx, vy, xlabel in panels:
        if ty:
            ax.plot(tx, ty, color="tab:blue", linewidth=1.2, label="train")
        if vy:
            ax.plot(vx, vy, color="tab:orange", marker="o", markersize=4, linewidth=1.2, label="validation")
        if c.untrained_loss is not None:
            ax.axhline(
                c.untrained_loss,
                color="grey",
                linestyle=":",
                linewidth=1,
                label=f"untrained (step 0): {c.untrained_loss:.3f}",
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy loss (nats)")
        if ax is by_step and c.spikes:
            _mark_spikes(ax, c)
        ax.grid(True, which="major", alpha=0.3)
        peaks = [peak for _, peak in c.spikes] if ax is by_step else []
        _loss_scale(ax, [*ty, *vy, *peaks] + ([c.untrained_loss] if c.untrained_loss else []))
    _tokens_scale(by_tokens, [t for t in c.train_tokens + vt if t and t > 0])
    trained = [(v, s) for s, v in zip(c.val_step, c.val_loss, strict=True) if s > 0]
    if trained:
        loss, step = min(trained)
        offset = {"textcoords": "offset points", "xytext": (-8, 10), "ha": "right"}
        by_step.annotate(f"best {loss:.3f}", (step, loss), **offset)
    by_step.legend(loc="upper right", fontsize=8)
    by_step.set_title("loss by step", fontsize=10)
    by_tokens.set_title("loss by tokens seen", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _mark_spikes(ax, c: Curves) -> None:
    """Each loss spike: a red cross at its peak; the losses a rollback replaced, faint and dashed."""
    if c.abandoned:
        steps, losses = zip(*c.abandoned, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.35, linestyle="--", linewidth=1, label="rolled back")
    steps, peaks = zip(*c.spikes, strict=True)
    ax.plot(steps, peaks, "x", color="tab:red", markersize=8, markeredgewidth=2, label="loss spike")


def training_figure(c: Curves) -> Figure | None:
    """Learning rate, gradient norm (before clipping) and throughput against steps."""
    if not c.train_step:
        return None
    fig = Figure(figsize=(11, 2.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, values, label, color in (
        (axes[0], c.lr, "learning rate", "tab:green"),
        (axes[1], c.grad_norm, "gradient norm (before clipping)", "tab:red"),
        (axes[2], c.tokens_per_sec, "tokens / s", "tab:purple"),
    ):
        points = [(s, v) for s, v in zip(c.train_step, values, strict=True) if v is not None]
        ax.plot([s for s, _ in points], [v for _, v in points], color=color, linewidth=1.2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    return fig


def hellaswag_figure(c: Curves) -> Figure | None:
    """HellaSwag acc_norm and acc against steps (left) and tokens seen (right), chance (0.25) as a
    reference line; None when the run scored none (training_config.hellaswag_every)."""
    if not c.hellaswag_step:
        return None
    fig = Figure(figsize=(11, 3.4), dpi=100, layout="constrained")
    by_step, by_tokens = fig.subplots(1, 2)
    trained = [i for i, t in enumerate(c.hellaswag_tokens) if t]  # step 0 has no place on a log axis
    panels = (
        (by_step, range(len(c.hellaswag_step)), c.hellaswag_step, "step"),
        (by_tokens, trained, c.hellaswag_tokens, "tokens seen"),
    )
    for ax, kept, xs, xlabel in panels:
        x = [xs[i] for i in kept]
        for values, color, label in (
            (c.hellaswag_acc_norm, "tab:green", "acc_norm"),
            (c.hellaswag_acc, "tab:olive", "acc"),
        ):
            ax.plot(
                x,
                [values[i] for i in kept],
                color=color,
                marker="o",
                markersize=3,
                linewidth=1.2,
                label=label,
            )
        ax.axhline(0.25, color="grey", linestyle=":", linewidth=1, label="chance: 0.25")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("HellaSwag accuracy")
        ax.grid(True, alpha=0.3)
    _tokens_scale(by_tokens, [t for t in c.hellaswag_tokens if t])
    by_step.legend(loc="best", fontsize=8)
    by_step.set_title("HellaSwag by step", fontsize=10)
    by_tokens.set_title("HellaSwag by tokens seen", fontsize=10)
    return fig


def _tokens_scale(ax, positive: list[int]) -> None:
    """A log axis for tokens seen that span more than tenfold (`positive`: the nonzero ones)."""
    if positive and max(positive) / min(positive) > 10:
        ax.set_xscale("log")


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def write_loss_plot(run_dir: str | Path, curves: Curves) -> Path | None:
    """Redraw RUN_DIR/loss.png from `curves` (the training loop's, kept up to date event by event);
    written to a temporary name, then renamed."""
    run_dir = Path(run_dir)
    fig = loss_figure(curves, title=run_dir.name)
    if fig is None:
        return None
    path = run_dir / "loss.png"
    replace_file(path, png_bytes(fig))  # a full disk: the last whole plot stays
    return path


def _loss_scale(ax, values: list[float]) -> None:
    """A log axis with plain-number ticks when the loss spans more than a factor 1.5."""
    finite = [v for v in values if v is not None and 0 < v < float("inf")]
    if not finite or max(finite) / min(finite) <= 1.5:
        return
    ax.set_yscale("log")
    low, high = min(finite), max(finite)
    ticks = [t for t in LOSS_TICKS if low * 0.9 <= t <= high * 1.1]
    if len(ticks) >= 2:
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(NullFormatter())
