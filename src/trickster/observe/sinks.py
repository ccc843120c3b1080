"""The sinks that copy each event of metrics.jsonl elsewhere: metrics.csv, loss.png, TensorBoard,
Weights & Biases.

The training loop only writes events (through MetricSinks); loss.png is the one figure drawn while
it runs, and the report is built from the run folder afterwards (report.py).
"""

from __future__ import annotations

import csv
import html
import importlib
import io
from pathlib import Path

from trickster.atomic import replace_file
from trickster.config import Config
from trickster.errors import UserError, disk_errors
from trickster.observe.curves import Curves
from trickster.observe.events import MetricsLog, disk_fix, iter_metrics

TRACKING_EXTRA = "pip install nano-trickster[tracking]"

# metrics.csv: one row per train, eval or hellaswag event; an empty cell is a value that event
# does not carry
CSV_FIELDS = (
    "event",
    "step",
    "time",
    "tokens_seen",
    "train_loss",
    "val_loss",
    "val_perplexity",
    "lr",
    "grad_norm",
    "tokens_per_sec",
    "ms_per_step",
    "mfu",
    "peak_memory_gib",
    "acc_norm",
    "acc",
)
CSV_EVENTS = ("train", "eval", "hellaswag")

# (tag, metrics.jsonl key) of the train events, shared by TensorBoard and W&B
TRAIN_SCALARS = (
    ("loss/train", "train_loss"),
    ("optim/lr", "lr"),
    ("optim/grad_norm", "grad_norm"),
    ("speed/tokens_per_sec", "tokens_per_sec"),
    ("speed/ms_per_step", "ms_per_step"),
    ("speed/mfu", "mfu"),
    ("memory/peak_gib", "peak_memory_gib"),
    ("tokens_seen", "tokens_seen"),
)
# (tag, metrics.jsonl key) of the hellaswag events (training_config.hellaswag_every)
HELLASWAG_SCALARS = (("hellaswag/acc_norm", "acc_norm"), ("hellaswag/acc", "acc"))


def csv_rows(records: list[dict]) -> list[dict]:
    """The train, eval and hellaswag events as CSV rows."""
    rows = []
    for r in records:
        if r["event"] in CSV_EVENTS:
            rows.append({k: "" if r.get(k) is None else r[k] for k in CSV_FIELDS})  # None: not measured
    return rows


def require_tracking(cfg: Config) -> None:
    """Refuse a config that asks for TensorBoard or W&B when the package is not installed."""
    for key, module, name in (("tensorboard", "tensorboard", "TensorBoard"), ("use_wandb", "wandb", "wandb")):
        if getattr(cfg.logging, key):
            try:
                importlib.import_module(module)
            except ImportError:
                raise UserError(
                    f"logging_config.{key} is true but {name} is not installed; {TRACKING_EXTRA} "
                    f"(or set logging_config.{key}=false)"
                ) from None


class MetricSinks:
    """Every training event goes to metrics.jsonl first (the record of the run), then to:

    - metrics.csv: the train, eval and HellaSwag numbers as a table, rebuilt from metrics.jsonl whenever a
      run starts or resumes (so rows after the resumed checkpoint disappear with the JSON lines);
    - loss.png: redrawn after each evaluation (plots.write_loss_plot), unless
      logging_config.loss_plot is false, from curves read from metrics.jsonl when the run starts
      or resumes and then added to event by event;
    - TensorBoard event files in RUN_DIR/tensorboard (logging_config.tensorboard): train loss,
      lr, grad norm, tokens/s, ms/step, val loss, perplexity, HellaSwag accuracy, and the samples
      as text;
    - a Weights & Biases run (logging_config.use_wandb) with the same values, its files in
      RUN_DIR/wandb. A resumed run starts a new W&B run in the same group.

    `write()` takes the same arguments as MetricsLog.write. Creating the sinks only checks that
    the optional packages are installed and touches no file, so it can come before the run folder
    is made; each sink opens on the first event. Call close() at the end.
    """

    def __init__(self, run_dir: str | Path, cfg: Config):
        require_tracking(cfg)
        self.run_dir, self.cfg = Path(run_dir), cfg
        self.log: MetricsLog | None = None
        self._curves: Curves | None = None  # of loss.png (logging_config.loss_plot)
        self._read = False  # metrics.jsonl read back since this run started or resumed
        self._tensorboard = None
        self._wandb = None

    def train_with(self, cfg: Config) -> None:
        """The config the run trains with, as its config.yaml holds it (setup.write_run_files): the
        one W&B's run config and TensorBoard's run/config text record. The sinks were made with the
        config as given, before the run fitted its settings (train/fitted.py) and made batch_size:
        auto's numbers concrete."""
        self.cfg = cfg

    @property
    def path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def write(self, event: str, step: int, **values) -> None:
        if self.log is None:
            self.log = MetricsLog(self.path)
        self.copy(self.log.write(event, step, **values))

    def copy(self, record: dict) -> None:
        """The other sinks of an event already in metrics.jsonl: write() calls it, and a resume,
        which writes its `resume` event with the file cut back to the checkpoint (setup.write_run_files)."""
        event = record["event"]
        # the whole file is read once, when the run starts or resumes: later events are added to
        # what was read, so an event costs the same at step 10 and at step 10 million
        again = not self._read or event in ("start", "resume") or not (self.run_dir / "metrics.csv").is_file()
        with disk_errors(str(self.run_dir / "metrics.csv"), disk_fix(self.run_dir)):
            if again:
                self._read_back()
            else:
                self._add(record)
        self._read = True
        if self._curves is not None and event == "eval":
            from trickster.observe import plots

            with disk_errors(str(self.run_dir / "loss.png"), disk_fix(self.run_dir)):
                plots.write_loss_plot(self.run_dir, self._curves)
        if self.cfg.logging.tensorboard:
            self._write_tensorboard(record)
        if self.cfg.logging.use_wandb:
            self._write_wandb(record)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            import wandb

            self._wandb.finish()
            self._wandb = None
            wandb.teardown()  # the next run in this process reads WANDB_* afresh

    # ---- metrics.csv and the curves of loss.png
    def _read_back(self) -> None:
        """metrics.csv and the loss curves anew from metrics.jsonl (the event just written
        included), in one pass that holds one event at a time."""
        curves = Curves() if self.cfg.logging.loss_plot else None

        def lines():
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
            writer.writeheader()
            for r in iter_metrics(self.path):
                writer.writerows(csv_rows([r]))
                if curves is not None:
                    curves.add(r)
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
            yield buffer.getvalue()

        # in one rename: a kill while it is rewritten leaves the old file, not half of one
        replace_file(self.run_dir / "metrics.csv", lines())
        self._curves = curves

    def _add(self, record: dict) -> None:
        with open(self.run_dir / "metrics.csv", "a", encoding="utf-8", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerows(csv_rows([record]))
        if self._curves is not None:
            self._curves.add(record)

    # ---- TensorBoard
    def _write_tensorboard(self, r: dict) -> None:
        if self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            # on resume, drop the events logged after the checkpoint (they are logged again)
            purge = r["step"] + 1 if r["event"] == "resume" else None
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        tb, step = self._tensorboard, r["step"]
        if r["event"] == "start":
            tb.add_text("run/config", _markdown_code(self.cfg.to_yaml()), step)
        elif r["event"] == "train":
            for tag, key in TRAIN_SCALARS:
                if r.get(key) is not None:
                    tb.add_scalar(tag, r[key], step)
        elif r["event"] == "eval":
            tb.add_scalar("loss/val", r["val_loss"], step)
            tb.add_scalar("val/perplexity", r["val_perplexity"], step)
            if "sample" in r:
                tb.add_text("samples", _markdown_code(r["sample"]), step)
            tb.flush()
        elif r["event"] == "hellaswag":
            for tag, key in HELLASWAG_SCALARS:
                tb.add_scalar(tag, r[key], step)
            tb.flush()
        else:
            tb.flush()

    # ---- Weights & Biases
    def _write_wandb(self, r: dict) -> None:
        import wandb

        if self._wandb is None:
            name = self.run_dir.name + (f"-resumed-{r['step']}" if r["event"] == "resume" else "")
            try:
                self._wandb = wandb.init(
                    project=self.cfg.logging.wandb_project,
                    name=name,
                    group=self.run_dir.name,
                    job_type="train",
                    dir=str(self.run_dir),
                    config=self.cfg.to_dict(),
                    settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
                )
            except wandb.errors.Error as err:
                wandb.teardown()  # W&B keeps process-wide settings: leave none behind
                first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(
                    f"Weights & Biases did not start ({first_line}); run `wandb login`, set "
                    "WANDB_MODE=offline, or set logging_config.use_wandb=false"
                ) from None
        run, step = self._wandb, r["step"]
        if r["event"] == "train":
            run.log({tag: r[key] for tag, key in TRAIN_SCALARS if r.get(key) is not None}, step=step)
        elif r["event"] == "eval":
            values = {"loss/val": r["val_loss"], "val/perplexity": r["val_perplexity"]}
            if "sample" in r:
                values["samples"] = wandb.Html(f"<pre>{html.escape(r['sample'])}</pre>")
            run.log(values, step=step)
        elif r["event"] == "hellaswag":
            run.log({tag: r[key] for tag, key in HELLASWAG_SCALARS}, step=step)
        elif r["event"] == "end":
            run.summary["best_val_loss"] = r.get("best_val_loss")


def _markdown_code(text: str) -> str:
    """TensorBoard renders text as Markdown: indent by four spaces to keep it verbatim."""
    return "\n".join("    " + line for line in text.splitlines())
