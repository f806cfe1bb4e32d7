"""The ``depthlab`` commands: each parses its arguments, builds what the API needs and calls it.
Library modules are imported inside the commands, so ``depthlab --help`` stays fast."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from depthlab.cli.help import quantities_text, train_epilog
from depthlab.cli.output import cli_spelling, command_line, interrupted, log_to_stderr, os_error_line


def _cmd_models(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from depthlab.models import list_models, model_summary
    from depthlab.models.spec import resolve_spec

    # each preset's own input channels and classes (ImageNet layouts: 1000), as the counts are for them
    table = Table(title="depthlab models (trainable parameters incl. BN affine, for the input and classes shown)")
    for col in ("name", "family", "depth", "input", "classes", "params"):
        table.add_column(col, justify="left" if col in ("name", "family") else "right")
    for name in list_models():
        if args.family and not name.startswith(args.family):
            continue
        s, spec = model_summary(name), resolve_spec(name)
        table.add_row(name, str(s["family"]), str(s["depth"]), f"{spec.in_channels} ch", str(spec.num_classes),
                      f"{s['params']:,}")
    Console().print(table)
    print("families (any valid depth via model.depth): " + ", ".join(list_models(families=True)))
    return 0


def _cmd_datasets(args) -> int:
    from depthlab.data import DATASETS, list_datasets

    names = list_datasets()
    width = max(map(len, names))
    print("\n".join(f"{n:<{width}}  {DATASETS.meta(n).get('description', '')}".rstrip() for n in names))
    return 0


def _cmd_train(args) -> int:
    from depthlab.config import RunConfig
    from depthlab.training import train

    cfg = RunConfig.from_yaml(args.config) if args.config else RunConfig()
    overrides = list(args.set or [])
    for flag, key in ((args.out_dir, "out_dir"), (args.run_id, "run_id"), (args.data_dir, "data.data_dir"),
                      (args.device, "train.device")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = cfg.with_overrides(overrides)
    args.run_dir = cfg.run_dir  # for the message if a second Ctrl-C interrupts at once
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(json.dumps({k: summary[k] for k in ("run_dir", "status", "epoch", "train_acc", "test_acc", "signal")
                          if k in summary}))
    if summary["status"] == "interrupted":  # a checkpoint of the exact position was saved
        return 128 + int(getattr(signal, summary.get("signal") or "SIGINT", signal.SIGINT))
    return 0 if summary["status"] == "finished" else 1


def _cmd_eval(args) -> int:
    from depthlab.training import evaluate_run

    row = evaluate_run(args.run_dir, checkpoint=args.checkpoint, split=args.split, device=args.device)
    print(json.dumps(row))
    return 0


def _cmd_demo(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from depthlab.demo import run_demo

    depths = [int(d) for d in args.depths.split(",")]
    res = run_demo(out=args.out, depths=depths, epochs=args.epochs, seed=args.seed, device=args.device,
                   threads=args.threads, quiet=args.quiet)
    table = Table(title=f"plain vs resnet on digits ({res['seconds']:.0f} s)")
    for col in ("model", "depth", "params", "train acc", "test acc", "seconds"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in res["results"]:
        table.add_row(r["model"], str(r["depth"]), f"{r['params']:,}", f"{100 * r['train_acc']:.1f}%",
                      f"{100 * r['test_acc']:.1f}%", f"{r['seconds']:.1f}")
    console = Console()
    console.print(table)
    c = res["check"]
    word = {True: "OBSERVED", False: "NOT observed", None: "not checked"}[c["observed"]]
    console.print(f"expected: {c['expected']}: {word}")
    console.print(f"report: {res['report']}")
    return 0


def _cmd_remedies(args) -> int:
    from depthlab.experiments.remedies import VARIANTS, markdown_table, run_remedies

    variants = args.variants.split(",") if args.variants else None
    for v in variants or []:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; valid: {', '.join(VARIANTS)}")
    rows = run_remedies(depth=args.depth, epochs=args.epochs, seed=args.seed, out=args.runs, variants=variants,
                        device=args.device, quiet=args.quiet)
    command = command_line(args)
    table = markdown_table(rows, args.depth, command)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    print(table)
    return 0


def _cmd_diagnose(args) -> int:
    from depthlab.diagnose_run import diagnose
    from depthlab.diagnostics import resolve_quantities
    from depthlab.diagnostics.reading import reading
    from depthlab.report.diagnostic_plots import plot_diagnostics

    if args.list:
        print(quantities_text())
        return 0
    if not args.run_dirs and not args.model:
        raise ValueError("diagnose needs one or more run directories (depthlab diagnose RUN_DIR ...) or "
                         "--model package.module:function --data NAME; --list shows the quantities")
    names = resolve_quantities(args.quantities)
    options = {}
    for item in args.option or []:
        key, _, raw = item.partition("=")
        q, _, opt = key.partition(".")
        if not opt or not raw:
            raise ValueError(f"--option {item!r} must look like quantity.option=value, e.g. lesion.max_k=5")
        import yaml

        options.setdefault(q, {})[opt] = yaml.safe_load(raw)
    if args.model:
        return _diagnose_user_model(args, options)
    for run_dir in args.run_dirs:
        records = diagnose(run_dir, args.quantities, checkpoint=args.checkpoint, device=args.device,
                           options=options)
        print(f"{run_dir}: {len(records)} records -> {run_dir}/diagnostics.jsonl", file=sys.stderr)
        for line in reading(records):  # stderr: stdout lists the pictures (scripts read it)
            print(f"  {line}", file=sys.stderr)
    out = args.out or args.run_dirs[0]
    for path in plot_diagnostics(args.run_dirs, out, quantities=names):
        print(path)
    return 0


def _diagnose_user_model(args, options) -> int:
    """``depthlab diagnose --model pkg.mod:fn [--weights W] --data D``: your own network."""
    from depthlab.diagnostics.reading import reading
    from depthlab.report import write_report
    from depthlab.tracking import diagnose_user_model

    if args.run_dirs:
        raise ValueError("give either run directories or --model, not both")
    if not args.data:
        raise ValueError("--model needs --data: a dataset name (digits, mnist1d, ...), a .pt file with (x, y), or a "
                         "folder or archive of class folders (train/<class>/, test/<class>/)")
    out = Path(args.out or f"runs/diagnose-{args.model.rpartition(':')[2]}")
    blocks = [b for b in args.blocks.split(",") if b] if args.blocks else None
    records = diagnose_user_model(args.model, args.data, out, args.quantities, weights=args.weights, blocks=blocks,
                                  options=options)
    print(f"{args.model}: {len(records)} records -> {out}/diagnostics.jsonl", file=sys.stderr)
    for line in reading(records):
        print(f"  {line}", file=sys.stderr)
    print(write_report(out))
    return 0


def _cmd_reproduce(args) -> int:
    from depthlab.experiments import list_experiments, parse_params, reproduce

    if args.list or not args.name:
        for e in list_experiments():
            print(f"{e['name']:<18} {e['title']}\n{'':<18} {e['source']}\n{'':<18} expected: {e['expected']}")
        return 0 if args.list else 2
    command = command_line(args)
    if args.name == "all":
        from depthlab.experiments.suite import breakdown, reproduce_all

        result = reproduce_all(scale=args.scale, seeds=args.seeds, out=args.out, params=parse_params(args.param),
                               device=args.device, fresh=args.fresh, quiet=args.quiet, jobs=args.jobs,
                               command=command, executor=args.executor)
        print(breakdown(result))
        return 0
    doc = reproduce(args.name, scale=args.scale, seeds=args.seeds, out=args.out, params=parse_params(args.param),
                    device=args.device, fresh=args.fresh, quiet=args.quiet, command=command, jobs=args.jobs,
                    executor=args.executor)
    for v in doc["verdicts"]:
        print(f"{v['status'].upper():<14} {v['claim']}\n{'':<14} {v['detail']}")
    print(f"report: {doc['report']}")
    return 0


def _check_writable(directory: Path, target) -> None:
    """Raise ``WriteError`` naming ``target`` unless a file can be made in ``directory`` (made if
    missing): a command that writes two things checks both places before it writes either."""
    import tempfile

    from depthlab.fileio import write_error

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".depthlab-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise write_error(target, e) from e


def _cmd_report(args) -> int:
    from depthlab.fileio import atomic_write_text
    from depthlab.report import write_report
    from depthlab.report.markdown import compare_markdown, report_markdown

    if len(args.path) > 1 or args.compare:  # runs: curves and configs; experiments: verdicts, a column per dataset
        from depthlab.report.comparison import DEFAULT_OUT, compare, is_run

        cmd = command_line(args)
        if args.markdown and all(is_run(Path(p)) for p in args.path):
            raise ValueError("--markdown writes the verdicts of experiment directories side by side; for runs, "
                             "the comparison is the HTML page (--html FILE)")
        text = compare_markdown(args.path, cmd) if args.markdown else None  # fails before writing
        html = Path(args.html) if args.html else DEFAULT_OUT
        _check_writable(html.parent if html.parent.exists() else Path("."), html)
        if text is not None:
            _check_writable(Path(args.markdown).parent, args.markdown)
        print(compare(args.path, html, cmd))
        if text is not None:
            atomic_write_text(Path(args.markdown), text)
            print(args.markdown)
        return 0
    path = args.path[0]
    if args.figures:
        from depthlab.report.pages import export_figures

        if not (Path(path) / "experiment.json").is_file():
            raise ValueError("--figures writes an experiment's figures as PNG files; "
                             f"{path!r} holds no experiment.json")
        for png in export_figures(path, args.figures):
            print(png)
    if args.html:
        raise ValueError("--html names the page of a comparison (several directories, or --compare); one "
                         "directory's report is written into it as report.html")
    text = report_markdown(path, command_line(args)) if args.markdown else None  # fails before writing
    if text is not None:  # the HTML goes into the directory, the Markdown beside it or elsewhere
        if Path(path).is_dir():
            _check_writable(Path(path), Path(path) / "report.html")
        _check_writable(Path(args.markdown).parent, args.markdown)
    print(write_report(path))
    if text is not None:
        atomic_write_text(Path(args.markdown), text)
        print(args.markdown)
    return 0


def _cmd_sweep(args) -> int:
    from depthlab.sweep import plan_sweep, run_sweep
    from depthlab.sweep.results import print_table, summary_line

    if args.dry_run:
        plan = plan_sweep(args.sweep, executor=args.executor, workers=args.workers)
        print(plan.header() + " [dry run: nothing is trained or written]")
        print("\n".join(plan.lines()))
        return 0
    try:
        doc = run_sweep(args.sweep, executor=args.executor, workers=args.workers, quiet=args.quiet,
                        command=command_line(args))
    except KeyboardInterrupt:
        print("depthlab: sweep interrupted; runs in progress were checkpointed and results written; run the "
              "same command again to resume", file=sys.stderr)
        return 130
    print_table(doc)
    c = doc["counts"]
    bad = c["diverged"] + c["failed"]
    word = "complete" if doc["complete"] else "stopped"
    print(f"sweep {word}: {summary_line(doc)}" + (f"; {bad} did not finish (listed in results.md)" if bad else ""))
    print(f"results: {doc['paths']['markdown']}  {doc['paths']['html']}")
    code = 0
    failed = [r["run_id"] for r in doc["runs"] if r["status"] == "failed"]
    if failed:  # diverged runs are a result (exit 0); failed ones are work left undone (exit 1)
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        print(f"depthlab: {len(failed)} run{'s' if len(failed) > 1 else ''} failed: {', '.join(failed[:10])}{more} "
              f"(errors in results.md); run the same command again to retry them, each from its last checkpoint",
              file=sys.stderr)
        code = 1
    if not doc["complete"]:  # a stop signal reached the workers only
        print(f"depthlab: {c['interrupted']} runs were interrupted; run the same command again to resume them",
              file=sys.stderr)
        code = 1
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depthlab", description="Build, train and diagnose very deep CNNs.")
    from depthlab.version import __version__

    p.add_argument("--version", action="version", version=f"depthlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("models", help="list every preset with its parameter count")
    s.add_argument("--family", help="only names starting with this")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("datasets", help="list the datasets, one line each")
    s.set_defaults(func=_cmd_datasets)

    s = sub.add_parser("train", help="train one run", epilog=train_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", help="YAML file with model/data/train sections")
    s.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=0.05")
    s.add_argument("--out-dir", help="parent of run directories (default runs)")
    s.add_argument("--run-id", help="run directory name (default <model>-<data>-s<seed>)")
    s.add_argument("--data-dir", help="where dataset files live (default $DEPTHLAB_DATA_DIR or user cache)")
    s.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    s.add_argument("--resume", nargs="?", const=True, default=False, choices=["auto"], metavar="auto",
                   help="continue the run in the run directory; --resume auto: continue it if the directory "
                        "holds this run, else start it (use it under torchrun --max-restarts: docs/recovery.md)")
    s.add_argument("--overwrite", action="store_true", help="replace the run in the run directory (only a "
                                                             "depthlab run directory)")
    s.add_argument("--quiet", action="store_true", help="no progress output")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("eval", help="re-evaluate a run's checkpoint (appended to its metrics.jsonl unless "
                                        "a process is training the run)")
    s.add_argument("run_dir")
    s.add_argument("--checkpoint", default="last", help="last, best or a checkpoint file (default last)")
    s.add_argument("--split", default="test", choices=["test", "train", "val"])
    s.add_argument("--device", default="auto")
    s.set_defaults(func=_cmd_eval)

    s = sub.add_parser("demo", help="plain vs resnet at three depths on digits (25 s to 2 min on a 2-core CPU, idle)")
    s.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    s.add_argument("--depths", default="8,20,56", help="comma-separated depths, each 6n+2 (default 8,20,56)")
    s.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the quick recipe's)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("diagnose", help="run diagnostics on run directories; diagnostics.jsonl + one PNG each",
                       epilog=f"quantities:\n{quantities_text()}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("run_dirs", nargs="*", help="one or more run directories (plotted side by side)")
    s.add_argument("--list", action="store_true", help="list the quantities with what each measures, and exit")
    s.add_argument("--quantities", default="all", help="comma-separated quantities (see below), or all")
    s.add_argument("--checkpoint", default="last", help="last, best, init or a checkpoint file name")
    s.add_argument("--option", nargs="+", metavar="Q.KEY=VALUE", help="per-quantity options, e.g. lesion.max_k=5")
    s.add_argument("--out", help="where the PNGs go (default: the first run directory; with --model: "
                                 "runs/diagnose-FUNCTION)")
    s.add_argument("--device", default="auto")
    s.add_argument("--model", help="your own network instead of run directories: package.module:function or "
                                   "file.py:function, called without arguments")
    s.add_argument("--weights", help="with --model: a state dict saved with torch.save")
    s.add_argument("--data", help="with --model: a dataset name, a .pt file holding (x, y), or a folder or archive "
                                  "of class folders (imagefolder)")
    s.add_argument("--blocks", help="with --model: comma-separated module names of the depth units, where the "
                                    "layout is not recognised")
    s.set_defaults(func=_cmd_diagnose)

    s = sub.add_parser("remedies", help="which remedies restore a deep plain net's trainability (digits, CPU)")
    s.add_argument("--depth", type=int, default=56)
    s.add_argument("--epochs", type=int, default=None, help="default: the quick recipe's")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--variants", help="comma-separated subset (default: all)")
    s.add_argument("--runs", default="runs/remedies", help="where the run directories go")
    s.add_argument("--out", help="write the Markdown table here, e.g. docs/remedies.md")
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_remedies)

    s = sub.add_parser("reproduce", help="reproduce a published finding (grid of runs + verdict + report)")
    s.add_argument("name", nargs="?", help="experiment name (see --list), or all: every experiment and the index")
    s.add_argument("--list", action="store_true", help="list the experiments and what each expects")
    s.add_argument("--scale", default="quick", choices=["quick", "real", "paper"],
                   help="quick: bundled data, minutes on a 2-core CPU (default); real: CIFAR-10 images, a short "
                        "budget for a 2-core CPU (experiments that have it; CIFAR-10 in the data dir or "
                        "--param data_path=...); paper: CIFAR-10, the paper's recipe")
    s.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1; tables show mean +- sd (default 3 at the quick scale, 1 at the paper scale)")
    s.add_argument("--out", help="experiment directory (default runs/reproduce/NAME[-paper])")
    s.add_argument("--param", nargs="+", metavar="NAME=VALUE", help="experiment parameters, e.g. depths=8,20 epochs=3")
    s.add_argument("--device", default="auto")
    s.add_argument("--fresh", action="store_true", help="retrain every run instead of reusing finished ones")
    s.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N runs at once, each in its own process with cores/N threads (0: one per core)")
    s.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where --jobs runs train: local processes, or Ray (a local instance; depthlab[ray])")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_reproduce)

    s = sub.add_parser("report", help="self-contained HTML report of a run or experiment directory (or an index)")
    s.add_argument("path", nargs="+", help="a run directory, an experiment directory, or a directory of them; "
                                           "several runs compare their curves, configs and diagnostics on one "
                                           "page; several directories of experiments (e.g. one per dataset) "
                                           "compare their verdicts side by side")
    s.add_argument("--markdown", metavar="FILE", help="also write Markdown: every experiment's verdicts and tables, "
                                                       "a run's config and final metrics, or a table of the runs")
    s.add_argument("--compare", action="store_true", help="compare verdicts even with one directory (its "
                                                            "experiments grouped by dataset and scale)")
    s.add_argument("--html", metavar="FILE", help="where the comparison page goes (default: runs/compare.html)")
    s.add_argument("--figures", metavar="DIR", help="also write an experiment's figures as PNG files into DIR "
                                                   "(<experiment>_<n>.png)")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("sweep", help="run a grid of configs x seeds (local processes or Ray); skips finished runs")
    s.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep file (format: docs/sweeps.md)")
    s.add_argument("--executor", choices=["local", "ray"], help="override the file's executor")
    s.add_argument("--workers", type=int, help="override the file's workers (runs at a time)")
    s.add_argument("--dry-run", action="store_true", help="list the runs and what would be skipped or resumed")
    s.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    s.set_defaults(func=_cmd_sweep)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with log_to_stderr():
            return args.func(args)
    except KeyboardInterrupt:
        print(f"depthlab: {interrupted(args)}", file=sys.stderr)
        return 130
    except ValueError as e:  # our errors name the field and the valid values (an unknown name too: a
        # registry's UnknownNameError is a ValueError); a bare KeyError is a bug and keeps its traceback
        print(f"depthlab: error: {cli_spelling(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing file, no permission, a read-only or full disk: the path and the cause
        print(f"depthlab: error: {os_error_line(e)}", file=sys.stderr)
        return 2

