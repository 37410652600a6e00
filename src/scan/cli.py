"""The `scan` command: one sub-command per stage, `run` for all of them, and `presets`."""

from __future__ import annotations

import argparse
import sys

from scan.errors import ScanError

STAGE_COMMANDS = ("pretext", "mine", "cluster", "selflabel")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (and exit code 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"scan: error: {message} (see scan --help)\n")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", metavar="[PRESET] [key=value ...]",
                   help="preset name (default digits) and config overrides such as pretext.epochs=20")
    p.add_argument("--data", help="an .npz with x_train, y_train, x_test, y_test (optional classes)")
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
    p = sub.add_parser("evaluate", help="metrics on the test split; writes DIR/metrics.json")
    p.add_argument("dir")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sub.add_parser("presets", help="the presets and what each one sets")
    return parser


def _config(ns: argparse.Namespace):
    from scan.config import build_config

    preset_args = [a for a in ns.args if "=" not in a]
    if len(preset_args) > 1:
        raise ScanError(f"expected at most one preset name, got {', '.join(preset_args)}")
    overrides = [a for a in ns.args if "=" in a]
    return build_config(preset_args[0] if preset_args else "digits", overrides=overrides, data=ns.data,
                        clusters=ns.clusters, seed=ns.seed, device=ns.device)


def _run(ns: argparse.Namespace) -> None:
    from scan.pipeline import run_pipeline

    run_pipeline(_config(ns), out=ns.out, force=ns.force)


def _stage(ns: argparse.Namespace) -> None:
    from scan.console import echo
    from scan.pipeline import commit_config, load_data, open_run, run_stage
    from scan.train import resolve_device

    cfg = _config(ns)
    run = open_run(cfg, ns.out, ns.force)
    device = resolve_device(cfg.device)
    echo(f"run: {run.root}, stage {ns.command} (device {device})")
    data = load_data(cfg)
    commit_config(run, cfg)
    run_stage(ns.command, cfg, run, data, device, rerun=ns.force)


def _evaluate(ns: argparse.Namespace) -> None:
    from pathlib import Path

    from scan.checkpoint import RunDir
    from scan.console import set_log_file
    from scan.evaluate import evaluate_run
    from scan.pipeline import read_config
    from scan.train import resolve_device

    run = RunDir(Path(ns.dir))
    cfg = read_config(run)
    set_log_file(run.log)
    evaluate_run(run, cfg, resolve_device(ns.device))


def _presets(ns: argparse.Namespace) -> None:
    from scan.config import build_config, preset_names

    for name in preset_names():
        c = build_config(name)
        print(f"{name}: source {c.data.source}, {c.data.channels}×{c.data.size}×{c.data.size}, K={c.clusters}, "
              f"backbone {c.pretext.backbone}; pretext {c.pretext.epochs} ep × batch {c.pretext.batch_size} "
              f"(lr {c.pretext.lr}); k={c.mine.k}; cluster {c.cluster.epochs} ep, {c.cluster.num_heads} head(s), "
              f"λ={c.cluster.entropy_weight}{', head only' if c.cluster.update_head_only else ''}; "
              f"selflabel {c.selflabel.epochs} ep, threshold {c.selflabel.threshold}")


COMMANDS = {"run": _run, "evaluate": _evaluate, "presets": _presets, **{s: _stage for s in STAGE_COMMANDS}}


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
    return 0
