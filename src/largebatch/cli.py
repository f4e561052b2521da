"""The ``largebatch`` command line.

Each subcommand has a function that adds its arguments and one that runs it; heavy modules
(torch) are imported only inside the run functions, so ``largebatch plan`` and ``--help``
answer at once. User mistakes print one line (``largebatch: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import warnings
from typing import Any

from largebatch import config as cfg
from largebatch.errors import CheckpointWarning, UserError


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage plus message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _list_of_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(f"{v:g}" for v in value) or "none"
    if value == "":
        return "''"
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field; defaults shown are those of the default recipe."""
    defaults = cfg.load_config(cfg.DEFAULT_RECIPE)
    for section in cfg.SECTIONS:
        group = parser.add_argument_group(f"[{section}] (recipe section)")
        for f in cfg.section_fields(section):
            flag = cfg.flag_name(section, f)
            default = getattr(getattr(defaults, section), f.name)
            help_text = f"{f.metadata['help']} (default: {_shown(default)})"
            kwargs: dict[str, Any] = {"dest": f"{section}.{f.name}", "default": None, "help": help_text}
            if f.type == "bool":
                group.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, **kwargs)
                continue
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            kwargs["type"] = {"int": int, "float": float, "str": str, "list": _list_of_floats}[f.type]
            kwargs["metavar"] = {"int": "N", "float": "X", "str": "NAME" if kwargs.get("choices") is None else None,
                                 "list": "X,Y"}[f.type]
            if kwargs["metavar"] is None:
                del kwargs["metavar"]
            group.add_argument(f"--{flag}", **kwargs)


def config_from_args(args: argparse.Namespace) -> cfg.Config:
    """The recipe, then the flags given on the command line (each validated by name)."""
    fields = {f"{s}.{f.name}": (s, f) for s in cfg.SECTIONS for f in cfg.section_fields(s)}
    overrides = {}
    for dest, (section, f) in fields.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[dest] = cfg.check_value(f"--{cfg.flag_name(section, f)}", f, value)
    return cfg.build_config(cfg.load_recipe(args.recipe), overrides)


# --- train -----------------------------------------------------------------------------------

def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default=cfg.DEFAULT_RECIPE, metavar="NAME_OR_PATH",
                        help=f"built-in recipe name or path to a .toml file (default: {cfg.DEFAULT_RECIPE}; "
                             f"built-in: {', '.join(cfg.recipe_names())})")
    parser.add_argument("--resume", default="", metavar="auto|PATH",
                        help="continue from a checkpoint: 'auto' for the newest valid one in the run "
                             "directory (fresh start if none), or a checkpoint file (default: off)")
    add_config_flags(parser)


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from largebatch.train import train
    summary = train(config, resume=args.resume)
    return 0 if summary else 1


# --- evaluate --------------------------------------------------------------------------------

def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (its newest valid checkpoint is used)")
    parser.add_argument("--checkpoint", default="", help="a specific checkpoint file (default: newest)")
    parser.add_argument("--data-dir", default="", help="data folder, if not the one the run used (default: the run's)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to evaluate (default: auto)")


def run_evaluate(args: argparse.Namespace) -> int:
    from largebatch.evaluate import evaluate_run
    result = evaluate_run(args.run_dir, args.checkpoint, args.data_dir, args.device)
    print(json.dumps(result, indent=2))
    return 0


# --- models ----------------------------------------------------------------------------------

def add_models_args(parser: argparse.ArgumentParser) -> None:
    pass


def run_models(args: argparse.Namespace) -> int:
    from largebatch.models import print_table
    print_table()
    return 0


# --- recipes ---------------------------------------------------------------------------------

def add_recipes_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="print this recipe resolved (default: list them)")


def run_recipes(args: argparse.Namespace) -> int:
    if args.name:
        print(cfg.to_toml(cfg.load_config(args.name)), end="")
        return 0
    for name in cfg.recipe_names():
        recipe = cfg.load_recipe(name)
        print(f"{name:28s} {recipe[''].get('description', '')}")
    return 0


# --- study and report ------------------------------------------------------------------------

def add_study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study file (.toml) or built-in name, e.g. study_fashion_mnist")
    parser.add_argument("--out", default="", help="study directory (default: the study file's study.out)")
    parser.add_argument("--only", default="", help="run only the runs whose name contains this text (default: all)")
    parser.add_argument("--exclude", default="", help="skip the runs whose name contains this text (default: none)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs without training (default: off)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end (default: write it)")


def run_study(args: argparse.Namespace) -> int:
    from largebatch.study import load_study, run_study as run
    study = load_study(args.study, args.out)
    run(study, only=args.only, dry_run=args.dry_run, exclude=args.exclude)
    if not args.dry_run and not args.no_report:
        from largebatch.report import find_run_dirs, write_report
        if find_run_dirs(study.out):
            print(f"report: {write_report(str(study.out))}")
    return 0


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a run directory or a study directory")
    parser.add_argument("--out", default="", help="where to write report.md, results.json and plots (default: DIRECTORY)")
    parser.add_argument("--merge", action="append", default=[], metavar="RESULTS_JSON",
                        help="also report the runs of an earlier report's results.json whose run directories are not "
                             "in DIRECTORY (runs done elsewhere); repeatable; a run directory wins over a merged row")


def run_report(args: argparse.Namespace) -> int:
    from largebatch.report import write_report
    path = write_report(args.directory, args.out, args.merge)
    print(path.read_text(), end="")
    return 0

# --- plan ------------------------------------------------------------------------------------

def add_plan_args(parser: argparse.ArgumentParser) -> None:
    from largebatch.plan.command import add_arguments
    add_arguments(parser)


def run_plan(args: argparse.Namespace) -> int:
    from largebatch.plan.command import run
    return run(args)


# --- critical batch --------------------------------------------------------------------------

def add_critical_batch_args(parser: argparse.ArgumentParser) -> None:
    from largebatch.critical_batch import add_arguments
    add_arguments(parser)


def run_critical_batch(args: argparse.Namespace) -> int:
    from largebatch.critical_batch import run
    return run(args)


# --- benchmark -------------------------------------------------------------------------------

def add_benchmark_args(parser: argparse.ArgumentParser) -> None:
    from largebatch.benchmark import add_arguments
    add_arguments(parser)


def run_benchmark(args: argparse.Namespace) -> int:
    from largebatch.benchmark import run
    return run(args)


# --- prepare ---------------------------------------------------------------------------------

def add_prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default="", metavar="SRC",
                        help="ImageNet-layout folder (train/<wnid>/*.JPEG and val/, as --data-dir reads it)")
    parser.add_argument("out", nargs="?", default="", metavar="OUT",
                        help="output folder: one tier folder each (OUT/originals, OUT/short256-q90 ...)")
    parser.add_argument("--tiers", default="originals",
                        help="comma-separated: originals (bytes copied), shortN (shorter side N px), maxN (longer "
                             "side at most N px) (default: originals)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded tiers (default: 90, FFCV's)")
    parser.add_argument("--images-per-shard", type=int, default=2048,
                        help="images per tar shard (default: 2048, ~230 MB of ImageNet originals)")
    parser.add_argument("--processes", type=int, default=0, help="worker processes (default: 0, one per core)")
    parser.add_argument("--verify", default="", metavar="TIER_DIR",
                        help="instead: check every shard of a prepared tier folder against its SHA-256")


def run_prepare(args: argparse.Namespace) -> int:
    from largebatch.data.prepare import run_command
    return run_command(args)


COMMANDS = {
    # name: (help, add arguments, run)
    "train": ("train a model (one process, or many under torchrun)", add_train_args, run_train),
    "evaluate": ("evaluate a run's checkpoint on its test set", add_evaluate_args, run_evaluate),
    "models": ("list the model architectures with parameters and GMACs", add_models_args, run_models),
    "study": ("run a grid of training runs (batch sizes x optimizers ...); resumable", add_study_args, run_study),
    "report": ("Markdown table, results.json and plots for a run or a study", add_report_args, run_report),
    "recipes": ("list the built-in recipes, or print one resolved", add_recipes_args, run_recipes),
    "plan": ("predict time to train on many processors: compute, all-reduce, bottleneck", add_plan_args, run_plan),
    "critical-batch": ("fit S_min, E_min and the critical batch size from a study's steps to a target top-1",
                       add_critical_batch_args, run_critical_batch),
    "benchmark": ("measure this machine's training rate and all-reduce bandwidth; write a plan preset",
                  add_benchmark_args, run_benchmark),
    "prepare": ("convert an ImageNet-layout folder to tar shards read by index (tiers: originals, re-encoded); "
                "resumable", add_prepare_args, run_prepare),
}


def build_parser() -> Parser:
    parser = Parser(prog="largebatch", description="Large-batch training with LARS, after You et al., "
                    "'ImageNet Training in Minutes' (2018). Run 'largebatch COMMAND --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (help_text, add_args, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_args(command)
        command.set_defaults(run=run)
    return parser


# Faults of the machine rather than of our code: a full disk, a read-only or forbidden folder, a
# file where a folder should be. They get one line naming the file, like a user error.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
ENVIRONMENT_ERRORS = DISK_FULL | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


_python_format_warning = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Our own warnings (a skipped checkpoint) in one line; others (torch's) as Python prints them."""
    if issubclass(category, CheckpointWarning):
        return f"largebatch: warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    try:
        try:
            return _main(sys.argv[1:] if argv is None else argv)
        finally:
            sys.stdout.flush()  # here, inside the try: a closed pipe must raise now, not at interpreter exit
    except BrokenPipeError:
        # The reader went away (`largebatch models | head -1`): stop quietly, as cat does, and point
        # stdout at /dev/null so the interpreter's last flush does not raise again (Python's documented
        # recipe for SIGPIPE).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
            pass
        return 1


def _main(argv: list[str]) -> int:
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except UserError as error:
        print(f"largebatch: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRORS:
            raise
        where = f" {error.filename}" if error.filename else ""
        advice = ("free some space, then continue the run with --resume auto" if error.errno in DISK_FULL
                  else "check the path and its permissions")
        print(f"largebatch: error: cannot write or read{where}: {error.strerror or error}; {advice}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("largebatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
