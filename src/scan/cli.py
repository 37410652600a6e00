"""The `scan` command: one sub-command per stage, `run` for all of them, and the tools around a
run (config, report, predict, evaluate, import, presets)."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from scan import __version__
from scan.errors import ScanError
from scan.stage_table import STAGE_NAMES as STAGE_COMMANDS

if TYPE_CHECKING:  # imported lazily at run time: `scan --version` and `scan help` stay fast
    from scan.checkpoint import RunDir
    from scan.config import RunConfig

DEVICE_CHOICES = ("auto", "cpu", "cuda")
EXAMPLES = """examples:
  scan run                                  the default job: 10 clusters of scikit-learn's digits (2-4 minutes)
  scan run mnist --data mnist.npz           another preset on your data (scan presets lists them)
  scan run --data photos/ --clusters 20     your own image folder
  scan run pretext.epochs=50 --seed 1       any config key as section.key=value (scan config lists them)
  scan run --config my.yaml                 a partial config file layered on the preset
  scan config digits cluster.restarts=3     print the resolved config, one comment per key
  scan report runs/digits                   an HTML page of the clusters
  scan predict runs/digits photos/ -o out.csv   clusters of new images
  scan help run                             the options of one command
"""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (and exit code 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"scan: error: {message} (see scan --help)\n")


def _clusters(text: str) -> int | str:
    """--clusters: an integer K or 'auto'."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or auto, got {text!r}") from None


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """What makes a config: PRESET, --config FILE, the common options and key=value overrides."""
    p.add_argument("args", nargs="*", metavar="[PRESET] [key=value ...]",
                   help="preset name (default digits) and config overrides such as pretext.epochs=20")
    p.add_argument("--config", metavar="FILE.yaml", dest="config_file",
                   help="a partial config (sections and keys as in RUN/config.yaml) layered on the preset; "
                        "options and key=value overrides apply on top")
    p.add_argument("--data", "--data-root", dest="data", help="an image folder, the preset's dataset root, or an .npz with x_train, y_train, "
                                  "x_test, y_test (optional classes)")
    p.add_argument("--size", type=int, help="base resolution images are brought to (sets data.size)")
    p.add_argument("--clusters", type=_clusters, help="number of clusters K, or auto to estimate it")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", choices=DEVICE_CHOICES, help="default auto")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_config_options(p)
    p.add_argument("--out", help="run directory (default runs/PRESET, or runs/PRESET-2, -3, ... "
                                 "when that one holds another config)")
    p.add_argument("--force", action="store_true",
                   help="accept a changed config in an existing run dir and rerun what it changes")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="scan", description="Classify images without labels (SCAN).", epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"scan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    _add_run_options(sub.add_parser("run", help="all stages, then evaluation"))
    for name in STAGE_COMMANDS:
        _add_run_options(sub.add_parser(name, help=f"the {name} stage alone (earlier stages must be finished)"))
    _add_config_options(sub.add_parser("config", help="print the resolved config as YAML, one comment per key"))
    p = sub.add_parser("evaluate", help="metrics on the test split; writes DIR/metrics.json "
                                        "(or PRESET --model FILE: an original checkpoint, nothing written)")
    p.add_argument("target", metavar="DIR|PRESET", help="a run directory, or with --model the preset whose test split to use")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="with --model: config overrides")
    p.add_argument("--model", metavar="FILE", help="an original SCAN or self-label checkpoint (.pth.tar)")
    p.add_argument("--data", help="with --model: the data the preset reads, as for scan run")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p = sub.add_parser("report", help="RUN/report/index.html and RUN/assignments.csv")
    p.add_argument("dir", metavar="RUN")
    p.add_argument("--per-cluster", type=int, default=16, help="most confident images shown per cluster (default 16)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p = sub.add_parser("predict", help="clusters of image files or folders (recursive) as CSV")
    p.add_argument("dir", metavar="RUN", help="a run directory, or a folder with an exported model.safetensors + model.json")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--output", "-o", metavar="FILE", help="CSV file to write (default: standard output)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p = sub.add_parser("import", help="an original SCAN checkpoint (.pth.tar) as a run directory")
    p.add_argument("file", metavar="FILE", help="a pretext, SCAN or self-label model file of the original code")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--preset", required=True, help="the preset the checkpoint was trained for (scan presets)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--data", help="the data the preset reads, as for scan run")
    p.add_argument("--force", action="store_true", help="replace the imported stage in a run dir with another config")
    sub.add_parser("presets", help="the presets and what each one sets")
    p = sub.add_parser("help", help="this help, or the help of one command")
    p.add_argument("topic", nargs="?", metavar="COMMAND")
    return parser


def _config(ns: argparse.Namespace):
    from scan.config import build_config

    preset_args = [a for a in ns.args if "=" not in a]
    if len(preset_args) > 1:
        raise ScanError(f"expected at most one preset name, got {', '.join(preset_args)}")
    overrides = [a for a in ns.args if "=" in a]
    return build_config(preset_args[0] if preset_args else "digits", overrides=overrides, data=ns.data,
                        clusters=ns.clusters, seed=ns.seed, device=ns.device, size=ns.size,
                        config_file=ns.config_file)


def _run(ns: argparse.Namespace) -> None:
    from scan.api import resolve_out
    from scan.console import warn_busy_cores
    from scan.distributed import launch_from_env
    from scan.pipeline import run_pipeline

    cfg = _config(ns)
    # Under torchrun or srun every rank runs this; rank 0 alone speaks (and computes the warnings).
    main_rank = launch_from_env().rank == 0
    out = resolve_out(cfg, ns.out, ns.force, quiet=not main_rank)
    if main_rank:
        warn_busy_cores()
    start = time.perf_counter()
    metrics = run_pipeline(cfg, out=out, force=ns.force)
    if main_rank:
        closing_block(out, cfg, metrics, time.perf_counter() - start)


METRIC_NAMES = {"acc": "ACC", "nmi": "NMI", "ari": "ARI", "confidence": "mean confidence",
                "empty_clusters": "empty clusters", "smallest_share": "smallest cluster share",
                "largest_share": "largest cluster share"}
# Train images up to which the closing block assigns the train split for its split/merge hint
# (one inference pass; larger runs get the hint from `scan report`).
CLOSING_MAX_TRAIN = 100_000


def closing_block(out: Path, cfg: RunConfig, metrics: dict, seconds: float) -> None:
    """What `scan run` prints last: the final step's test metrics (label-free diagnostics when
    there are no labels), a warning when clusters look like one class split in two, the run
    folder and the commands that come next."""
    from scan.console import echo

    # The final model: evaluation names it (self-labelling may have been kept out by its safeguard).
    step = metrics.get("final", {}).get("step") or ("selflabel" if "selflabel" in metrics else "cluster")
    values = metrics.get(step, {})
    labelled = "acc" in values
    keys = ("acc", "nmi", "ari") if labelled else ("confidence", "empty_clusters", "smallest_share", "largest_share")
    shown = ", ".join(f"{METRIC_NAMES[k]} {values[k]:.3f}" if isinstance(values[k], float) else f"{METRIC_NAMES[k]} {values[k]}"
                      for k in keys if k in values)
    lines = ["", f"finished in {seconds:.0f} s: {out}",
             f"  {step} model, test split{'' if labelled else ' (no labels: label-free diagnostics)'}: {shown}"]
    lines += [f"  {w}" for w in run_warnings(out, cfg) if w]
    lines += ["next:",
              f"  scan report {out}                 the clusters as an HTML page ({out}/report/index.html)",
              f"  scan predict {out} IMAGES...      clusters of new image files or folders, as CSV"]
    echo("\n".join(lines))


def run_warnings(out: Path, cfg: RunConfig) -> list[str | None]:
    """The label-free warnings of a finished run (scan.diagnose): a validation loss that shows a
    poor solution, and the split/merge hint of the final model on the train split."""
    from scan.checkpoint import RunDir
    from scan.diagnose import best_validation_loss, data_digest, poor_solution_warning

    run = RunDir(Path(out))
    return [poor_solution_warning(cfg, best_validation_loss(run), data_digest(run)), _split_warning(run, cfg)]


def _split_warning(run: RunDir, cfg: RunConfig) -> str | None:
    from scan.checkpoint import read_npy
    from scan.data.sources import load_source
    from scan.diagnose import neighbor_exchange, split_pairs, split_warning
    from scan.predict import load

    path = run.stage("mine") / "neighbors.npy"
    if not path.is_file() or read_npy(path, mmap=True).shape[0] > CLOSING_MAX_TRAIN:
        return None
    neighbors = read_npy(path)
    data = load_source(cfg.data, cfg.runtime.stream)
    if len(data.train) != neighbors.shape[0]:
        return None
    model = load(run.root, cfg.device)
    clusters = model.assign(data.train)[0].numpy()
    return split_warning(split_pairs(neighbor_exchange(clusters, neighbors, model.num_clusters)))


def _stage(ns: argparse.Namespace) -> None:
    from scan.api import resolve_out
    from scan.console import warn_busy_cores
    from scan.distributed import launch_from_env
    from scan.pipeline import distributed_errors, run_stage, start_run

    cfg = _config(ns)
    main_rank = launch_from_env().rank == 0
    out = resolve_out(cfg, ns.out, ns.force, quiet=not main_rank)
    if main_rank:
        warn_busy_cores()
    with distributed_errors():
        ctx, run, data = start_run(cfg, out, ns.force)
        run_stage(ctx, ns.command, cfg, run, data, rerun=ns.force)


def commented_yaml(values: dict, prefix: str = "", indent: int = 0) -> list[str]:
    """Lines of YAML for a nested config dict, each key with its one-line KEY_HELP comment."""
    import yaml

    from scan.config import KEY_HELP

    lines = []
    for key, value in values.items():
        full, pad = prefix + key, "  " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines += commented_yaml(value, full + ".", indent + 1)
        else:
            # A one-element flow list gives the value's flow form without YAML's document end marker.
            text = f"{pad}{key}: {yaml.safe_dump([value], default_flow_style=True).strip()[1:-1]}"
            lines.append(f"{text:<40} # {KEY_HELP.get(full, '')}")
    return lines


def _config_command(ns: argparse.Namespace) -> None:
    cfg = _config(ns)
    print(f"# scan config {cfg.preset}: the resolved config (preset, then --config, options and overrides)")
    print("\n".join(commented_yaml(cfg.to_dict())))


def _evaluate(ns: argparse.Namespace) -> None:
    from scan.checkpoint import RunDir
    from scan.config import preset_names
    from scan.console import set_log_file
    from scan.evaluate import evaluate_run
    from scan.rundir import open_existing
    from scan.training.context import resolve_device

    if ns.model is not None:
        from scan.zoo import evaluate_checkpoint

        evaluate_checkpoint(ns.model, ns.target, ns.data, ns.overrides, ns.device)
        return
    if ns.overrides or ns.data:
        raise ScanError("config overrides and --data go with --model; a run directory is evaluated with its own config")
    run = RunDir(Path(ns.target))
    if not run.config.is_file() and ns.target in preset_names():
        raise ScanError(f"{ns.target} is a preset, not a run directory; to evaluate a checkpoint file on its "
                        f"test split add --model FILE")
    run, cfg = open_existing(run.root)
    set_log_file(run.log)
    evaluate_run(run, cfg, resolve_device(ns.device))


def _report(ns: argparse.Namespace) -> None:
    from scan.report import write_report

    index = write_report(ns.dir, ns.per_cluster, ns.device)
    print(f"report: {index}")
    print(f"assignments: {index.parent.parent / 'assignments.csv'}")


def _predict(ns: argparse.Namespace) -> None:
    from scan.console import printable
    from scan.predict import find_images, load, write_csv

    if ns.batch_size < 1:
        raise ScanError(f"--batch-size must be at least 1, got {ns.batch_size}")
    model = load(ns.dir, ns.device)
    paths = find_images(ns.inputs)

    def skipped(path: str) -> None:
        print(f"scan: warning: skipped {printable(path)}: not a readable image", file=sys.stderr)

    if ns.output is None:
        if hasattr(sys.stdout, "reconfigure"):  # file names that are not UTF-8 keep their bytes, as `ls` shows them
            sys.stdout.reconfigure(errors="surrogateescape")
        write_csv(model.predict_files(paths, ns.batch_size), sys.stdout, model.cluster_names, on_skip=skipped)
        return
    try:
        out = open(ns.output, "w", newline="", encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise ScanError(f"cannot write --output {ns.output}: {err.strerror}") from None
    with out:
        rows = write_csv(model.predict_files(paths, ns.batch_size), out, model.cluster_names, on_skip=skipped)
    print(f"predict: {rows} image(s) -> {ns.output}", file=sys.stderr)


def _import(ns: argparse.Namespace) -> None:
    from scan.zoo import import_checkpoint

    import_checkpoint(ns.file, ns.preset, ns.out, ns.data, ns.overrides, ns.force)


def pretext_text(c) -> str:
    if c.pretext.source == "pretrained":
        return "pretrained backbone, no pretext training"
    if c.pretext.epochs == 0:
        return "pretext imported from pretext.weights=FILE (MoCo v2)"
    return f"pretext {c.pretext.epochs} ep × batch {c.pretext.batch_size} (lr {c.pretext.lr})"


def _presets(ns: argparse.Namespace) -> None:
    from scan.config import build_config, preset_names

    for name in preset_names():
        try:
            c = build_config(name)
        except ScanError as err:  # e.g. a timm backbone without timm installed
            print(f"{name}: unavailable here: {err}")
            continue
        print(f"{name}: source {c.data.source}, {c.data.channels}×{c.data.size}×{c.data.size}, K={c.clusters}, "
              f"backbone {c.pretext.backbone}; {pretext_text(c)}; k={c.mine.k}; cluster {c.cluster.epochs} ep, {c.cluster.num_heads} head(s), "
              f"λ={c.cluster.entropy_weight}{', head only' if c.cluster.update_head_only else ''}"
              f"{f', {c.cluster.restarts} restarts' if c.cluster.restarts > 1 else ''}"
              f"{f', heads warm-started from {c.cluster.warm_start_heads}' if c.cluster.warm_start_heads else ''}; "
              f"selflabel {c.selflabel.epochs} ep, threshold {c.selflabel.threshold}")


def _help(ns: argparse.Namespace, parser: argparse.ArgumentParser, commands: dict) -> None:
    if ns.topic is None:
        parser.print_help()
    elif ns.topic in commands:
        commands[ns.topic].print_help()
    else:
        raise ScanError(_unknown_command(ns.topic, commands))


def _unknown_command(name: str, commands: dict) -> str:
    """'unknown command X' with the closest command, or `scan run X` when X is a preset."""
    from scan.config import preset_names

    if name in preset_names():
        return f"unknown command {name!r}; {name} is a preset: did you mean 'scan run {name}'?"
    close = difflib.get_close_matches(name, list(commands), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown command {name!r}; {hint}commands: {', '.join(commands)}"


COMMANDS = {"run": _run, "config": _config_command, "evaluate": _evaluate, "report": _report, "predict": _predict, "import": _import,
            "presets": _presets, **{s: _stage for s in STAGE_COMMANDS}}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `scan` console script; returns the process exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if not argv:
        parser.print_help()
        return 0
    if argv[0] in commands:
        # Intermixed parsing lets `key=value` overrides stand before, between or after options.
        ns = commands[argv[0]].parse_intermixed_args(argv[1:], argparse.Namespace(command=argv[0]))
    elif not argv[0].startswith("-"):
        print(f"scan: error: {_unknown_command(argv[0], commands)}", file=sys.stderr)
        return 2
    else:
        ns = parser.parse_args(argv)
        if ns.command is None:
            parser.print_help()
            return 0
    try:
        if ns.command == "help":
            _help(ns, parser, commands)
        else:
            COMMANDS[ns.command](ns)
    except ScanError as err:
        print(f"scan: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # before OSError, its base class
        # The reader went away (`scan presets | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        # The system refused a read or write that no reader or writer of scan's own turned into a
        # ScanError (a full disk under the report's images, say): still one line.
        where = f"{err.filename}: " if err.filename else ""
        print(f"scan: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scan: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
