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
from largebatch.errors import CheckpointWarning, Interrupted, UserError


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage plus message, and no abbreviations
    (``--opt sgd`` is an error, not ``--optimizer sgd``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

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
    parser.add_argument("--extend-schedule", action="store_true",
                        help="let a resume change the schedule (epochs, warmup, decay); prints the LR before and "
                             "after (default: a changed schedule is refused)")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve the recipe and flags, print the derived plan (batch split, LR schedule, "
                             "parameter groups) and exit without training (default: off)")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print JSON (default: text)")
    parser.add_argument("--processes", type=int, default=0, metavar="N",
                        help="with --dry-run: plan for N processes (default: $WORLD_SIZE, else 1)")
    add_config_flags(parser)


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.dry_run:
        return dry_run(config, args)
    if args.json or args.processes:
        raise UserError("--json and --processes go with --dry-run (a real run takes its processes from torchrun)")
    from largebatch.train import train
    train(config, resume=args.resume, extend_schedule=args.extend_schedule)
    return 0


def dry_run(config: cfg.Config, args: argparse.Namespace) -> int:
    from largebatch.train import dry_run as plan_run, format_dry_run
    processes = args.processes or int(os.environ.get("WORLD_SIZE", "1"))
    if processes < 1 or processes > 10_000_000:
        raise UserError(f"--processes: expected an integer in [1, 10000000], got {processes}")
    device = config.run.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    result, plan = plan_run(config, processes, device)
    print(json.dumps(result, indent=2) if args.json else format_dry_run(result, plan.describe()))
    return 0


# --- evaluate --------------------------------------------------------------------------------

def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory (its newest valid checkpoint is used)")
    parser.add_argument("--checkpoint", default="", help="a specific checkpoint file (default: newest)")
    parser.add_argument("--data-dir", default="", help="data folder, if not the one the run used (default: the run's)")
    parser.add_argument("--device", default="auto", choices=cfg.DEVICES,
                        help="where to evaluate (default: auto)")


def run_evaluate(args: argparse.Namespace) -> int:
    from largebatch.evaluate import evaluate_run
    result = evaluate_run(args.run_dir, args.checkpoint, args.data_dir, args.device)
    print(json.dumps(result, indent=2))
    return 0


# --- export ----------------------------------------------------------------------------------

def add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="where to write the weights (.pt: a torch state_dict; .safetensors: needs the "
                             "safetensors package); the class map goes beside it as FILE.classes.json")
    parser.add_argument("--best", action="store_true",
                        help="the checkpoint with the best test top-1 (default: the newest valid checkpoint)")
    parser.add_argument("--checkpoint", default="", metavar="FILE", help="a specific checkpoint file")


def run_export(args: argparse.Namespace) -> int:
    from largebatch.export import export
    written = export(args.run_dir, args.out, best=args.best, checkpoint_file=args.checkpoint)
    print("\n".join(str(path) for path in written))
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
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="settings",
                        help="set a recipe key on the runs selected (with --only/--exclude), e.g. "
                             "run.noise_scale=true; repeatable (default: none)")
    parser.add_argument("--merge", action="append", default=[], metavar="RESULTS_JSON",
                        help="count the runs of this study in an earlier report's results.json as done (runs done "
                             "on other machines): skipped, and used to widen the sweeps and place the extra seeds; "
                             "the report at the end includes them; repeatable")
    parser.add_argument("--dry-run", action="store_true", help="list the runs without training (default: off)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end (default: write it)")


def run_study(args: argparse.Namespace) -> int:
    from largebatch.study import load_study, run_study as run
    from largebatch.study.spec import parse_setting
    settings = dict(parse_setting(text) for text in args.settings)
    study = load_study(args.study, args.out)
    run(study, only=args.only, dry_run=args.dry_run, exclude=args.exclude, settings=settings, merge=args.merge)
    if not args.dry_run and not args.no_report:
        from largebatch.rundir import RunDirectoryError
        from largebatch.study.report import write_report
        from largebatch.study.runs import find_run_dirs
        if find_run_dirs(study.out):
            try:
                print(f"report: {write_report(str(study.out), merge=args.merge)}")
            except RunDirectoryError as error:  # another study process is writing it: the runs are done
                print(f"largebatch: warning: report not written ({error}); write it later with "
                      f"largebatch report {study.out}", file=sys.stderr)
    return 0


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a run directory or a study directory")
    parser.add_argument("--out", default="", help="where to write report.md, results.json and plots (default: DIRECTORY)")
    parser.add_argument("--merge", action="append", default=[], metavar="RESULTS_JSON",
                        help="also report the runs of an earlier report's results.json whose run directories are not "
                             "in DIRECTORY (runs done elsewhere); repeatable; a run directory wins over a merged row")
    parser.add_argument("--strict", action="store_true",
                        help="stop on a damaged run or merged row (default: leave it out with a warning)")
    parser.add_argument("--min-top1", type=float, default=None, metavar="X",
                        help="in the LR sweeps, a run that ended below this test top-1 counts as failed, like a "
                             "diverged one (default: the study file's study.min_top1, else 0)")


def run_report(args: argparse.Namespace) -> int:
    from largebatch.study.report import write_report
    if args.min_top1 is not None and not 0 <= args.min_top1 <= 1:
        raise UserError(f"--min-top1: expected a number in [0, 1], got {args.min_top1}")
    path = write_report(args.directory, args.out, args.merge, strict=args.strict, min_top1=args.min_top1)
    print(path.read_text(encoding="utf-8"), end="")
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
    "export": ("write a run's model weights as a plain state_dict (torchvision key names) and its class map",
               add_export_args, run_export),
    "models": ("list the model architectures with parameters and GMACs", add_models_args, run_models),
    "study": ("run a grid of training runs (batch sizes x optimizers ...); resumable", add_study_args, run_study),
    "report": ("Markdown table, results.json and plots for a run or a study", add_report_args, run_report),
    "recipes": ("list the built-in recipes, or print one resolved", add_recipes_args, run_recipes),
    "plan": ("predict time to train on many processors: compute, all-reduce, bottleneck", add_plan_args, run_plan),
    "critical-batch": ("fit S_min, E_min and the critical batch size from a study's steps to a target top-1",
                       add_critical_batch_args, run_critical_batch),
    "benchmark": ("measure this machine's training rate at several micro-batch sizes (the rate curve), the loader's "
                  "decode rate per core and the all-reduce bandwidth; write a plan preset",
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


# Faults of the machine rather than of our code get one line naming the file, like a user error,
# with advice by class: a full disk, a permission, anything else about the path.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
PERMISSION = {errno.EROFS, errno.EACCES, errno.EPERM}

# Exit statuses: 0 the work finished; 1 an unexpected error (a bug: it keeps its traceback); 2 a
# usage, configuration, data or checkpoint error; 3 the run diverged; 128 + N stopped by signal N
# after saving (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process killed by it.
EXIT_USER_ERROR = 2


def os_error_line(error: OSError) -> str:
    """One line for an OSError: the path, the system's reason, what to do."""
    where = f" {error.filename}" if error.filename else ""
    if error.errno in DISK_FULL:
        advice = "free some space, then continue the run with --resume auto"
    elif error.errno in PERMISSION:
        advice = "check the path's permissions, or choose another path"
    else:
        advice = "check the path"
    return f"cannot read or write{where}: {error.strerror or error}; {advice}"


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
        label = "stopped" if isinstance(error, Interrupted) else "error"
        print(f"largebatch: {label}: {error}", file=sys.stderr)
        return getattr(error, "exit_code", EXIT_USER_ERROR)
    except OSError as error:
        if isinstance(error, BrokenPipeError) or error.errno is None:
            raise
        print(f"largebatch: error: {os_error_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("largebatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
