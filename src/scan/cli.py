"""The `scan` command: one sub-command per stage, `run` for all of them, and `presets`."""

from __future__ import annotations

import argparse
import os
import sys

from scan.errors import ScanError
from scan.stage_table import STAGE_NAMES as STAGE_COMMANDS



class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (and exit code 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"scan: error: {message} (see scan --help)\n")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="[PRESET] [key=value ...]",
                   help="preset name (default digits) and config overrides such as pretext.epochs=20")
    p.add_argument("--data", "--data-root", dest="data", help="an image folder, the preset's dataset root, or an .npz with x_train, y_train, "
                                  "x_test, y_test (optional classes)")
    p.add_argument("--size", type=int, help="base resolution images are brought to (sets data.size)")
    p.add_argument("--clusters", type=int, help="number of clusters K")
    p.add_argument("--out", help="run directory (default runs/PRESET)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--force", action="store_true",
                   help="accept a changed config in an existing run dir and rerun what it changes")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="scan", description="Classify images without labels (SCAN).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_run_options(sub.add_parser("run", help="all stages, then evaluation"))
    for name in STAGE_COMMANDS:
        _add_run_options(sub.add_parser(name, help=f"the {name} stage alone (earlier stages must be finished)"))
    p = sub.add_parser("evaluate", help="metrics on the test split; writes DIR/metrics.json "
                                        "(or PRESET --model FILE: an original checkpoint, nothing written)")
    p.add_argument("target", metavar="DIR|PRESET", help="a run directory, or with --model the preset whose test split to use")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="with --model: config overrides")
    p.add_argument("--model", metavar="FILE", help="an original SCAN or self-label checkpoint (.pth.tar)")
    p.add_argument("--data", help="with --model: the data the preset reads, as for scan run")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p = sub.add_parser("report", help="RUN/report/index.html and RUN/assignments.csv")
    p.add_argument("dir", metavar="RUN")
    p.add_argument("--per-cluster", type=int, default=16, help="most confident images shown per cluster (default 16)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p = sub.add_parser("predict", help="clusters of image files or folders (recursive) as CSV")
    p.add_argument("dir", metavar="RUN", help="a run directory, or a folder with an exported model.safetensors + model.json")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--output", "-o", metavar="FILE", help="CSV file to write (default: standard output)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p = sub.add_parser("import", help="an original SCAN checkpoint (.pth.tar) as a run directory")
    p.add_argument("file", metavar="FILE", help="a pretext, SCAN or self-label model file of the original code")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--preset", required=True, help="the preset the checkpoint was trained for (scan presets)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--data", help="the data the preset reads, as for scan run")
    p.add_argument("--force", action="store_true", help="replace the imported stage in a run dir with another config")
    sub.add_parser("presets", help="the presets and what each one sets")
    return parser


def _config(ns: argparse.Namespace):
    from scan.config import build_config

    preset_args = [a for a in ns.args if "=" not in a]
    if len(preset_args) > 1:
        raise ScanError(f"expected at most one preset name, got {', '.join(preset_args)}")
    overrides = [a for a in ns.args if "=" in a]
    return build_config(preset_args[0] if preset_args else "digits", overrides=overrides, data=ns.data,
                        clusters=ns.clusters, seed=ns.seed, device=ns.device, size=ns.size)


def _run(ns: argparse.Namespace) -> None:
    from scan.pipeline import run_pipeline

    run_pipeline(_config(ns), out=ns.out, force=ns.force)


def _stage(ns: argparse.Namespace) -> None:
    from scan.pipeline import distributed_errors, run_stage, start_run

    cfg = _config(ns)
    with distributed_errors():
        ctx, run, data = start_run(cfg, ns.out, ns.force)
        run_stage(ctx, ns.command, cfg, run, data, rerun=ns.force)


def _evaluate(ns: argparse.Namespace) -> None:
    from pathlib import Path

    from scan.checkpoint import RunDir
    from scan.config import preset_names
    from scan.console import set_log_file
    from scan.evaluate import evaluate_run
    from scan.pipeline import read_config
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
    cfg = read_config(run)
    set_log_file(run.log)
    evaluate_run(run, cfg, resolve_device(ns.device))


def _report(ns: argparse.Namespace) -> None:
    from scan.report import write_report

    index = write_report(ns.dir, ns.per_cluster, ns.device)
    print(f"report: {index}")
    print(f"assignments: {index.parent.parent / 'assignments.csv'}")


def _predict(ns: argparse.Namespace) -> None:
    from scan.predict import find_images, load, write_csv

    if ns.batch_size < 1:
        raise ScanError(f"--batch-size must be at least 1, got {ns.batch_size}")
    model = load(ns.dir, ns.device)
    paths = find_images(ns.inputs)

    def skipped(path: str) -> None:
        print(f"scan: warning: skipped {path}: not a readable image", file=sys.stderr)

    if ns.output is None:
        write_csv(model.predict_files(paths, ns.batch_size), sys.stdout, model.cluster_names, on_skip=skipped)
        return
    try:
        out = open(ns.output, "w", newline="", encoding="utf-8")
    except OSError as err:
        raise ScanError(f"cannot write --output {ns.output}: {err.strerror}") from None
    with out:
        rows = write_csv(model.predict_files(paths, ns.batch_size), out, model.cluster_names, on_skip=skipped)
    print(f"predict: {rows} image(s) -> {ns.output}", file=sys.stderr)


def _import(ns: argparse.Namespace) -> None:
    from scan.zoo import import_checkpoint

    import_checkpoint(ns.file, ns.preset, ns.out, ns.data, ns.overrides, ns.force)


def pretext_text(c) -> str:
    if c.pretext.epochs == 0:
        return "pretext imported from pretext.weights=FILE (MoCo v2)"
    return f"pretext {c.pretext.epochs} ep × batch {c.pretext.batch_size} (lr {c.pretext.lr})"


def _presets(ns: argparse.Namespace) -> None:
    from scan.config import build_config, preset_names

    for name in preset_names():
        c = build_config(name)
        print(f"{name}: source {c.data.source}, {c.data.channels}×{c.data.size}×{c.data.size}, K={c.clusters}, "
              f"backbone {c.pretext.backbone}; {pretext_text(c)}; k={c.mine.k}; cluster {c.cluster.epochs} ep, {c.cluster.num_heads} head(s), "
              f"λ={c.cluster.entropy_weight}{', head only' if c.cluster.update_head_only else ''}"
              f"{f', {c.cluster.restarts} restarts' if c.cluster.restarts > 1 else ''}; "
              f"selflabel {c.selflabel.epochs} ep, threshold {c.selflabel.threshold}")


COMMANDS = {"run": _run, "evaluate": _evaluate, "report": _report, "predict": _predict, "import": _import,
            "presets": _presets, **{s: _stage for s in STAGE_COMMANDS}}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `scan` console script; returns the process exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in commands:
        # Intermixed parsing lets `key=value` overrides stand before, between or after options.
        ns = commands[argv[0]].parse_intermixed_args(argv[1:], argparse.Namespace(command=argv[0]))
    else:
        ns = parser.parse_args(argv)
    try:
        COMMANDS[ns.command](ns)
    except ScanError as err:
        print(f"scan: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scan: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`scan presets | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0
