"""What the CLI prints besides results: one-line log messages in the CLI's spellings, and what a
Ctrl-C that reached ``main`` means for the command that was running."""
from __future__ import annotations

import contextlib
import logging
import re
import shlex
import sys

from depthlab.fileio import WriteError, os_advice, os_cause


def command_line(args, argv=None) -> str:
    """The command line as typed (for provenance): ``depthlab`` + the arguments main() parsed."""
    return "depthlab " + " ".join(shlex.quote(a) for a in (args.argv if argv is None else argv))


def interrupted(args) -> str:
    """What a KeyboardInterrupt that reached main() means for this command, and how to go on."""
    run_dir = getattr(args, "run_dir", None)
    if args.command == "train" and run_dir is not None and (run_dir / "config.json").exists():
        # the first Ctrl-C returns normally (a checkpoint of that step): this is a second one
        resumes = any(a == "--resume" or a.startswith("--resume=") for a in args.argv)  # --resume [auto] resumes
        again = [a for a in args.argv if a != "--overwrite"] + ([] if resumes else ["--resume"])
        return f"stopped; the last checkpoint is kept; continue with `{command_line(args, again)}`"
    if args.command == "train":
        return "interrupted before training started; nothing was written"
    if args.command == "reproduce":
        again = "without --fresh" if args.fresh else "again"
        return (f"interrupted; finished runs are kept and the interrupted run was checkpointed; run the same "
                f"command {again} to continue")
    if args.command in ("demo", "remedies"):  # they overwrite every run: a re-run does not resume
        where = args.out if args.command == "demo" else args.runs
        return (f"interrupted; the runs finished so far are kept under {where}, but running the same command "
                f"again trains every run from the start")
    return "interrupted; nothing was lost"


def os_error_line(err: OSError) -> str:
    """An OSError (no permission, read-only file system, disk full) as one line naming the path
    and the cause; our own errors (``WriteError``, messages without an errno) as they are."""
    if isinstance(err, WriteError) or err.errno is None:
        return cli_spelling(" ".join(str(err).split()))
    where = " -> ".join(repr(str(f)) for f in (err.filename, err.filename2) if f is not None)
    advice = os_advice(err)
    return cli_spelling(f"{where + ': ' if where else ''}{os_cause(err)}" + (f"; {advice}" if advice else ""))


# Library messages name the Python spelling first, the CLI's in parentheses; the CLI shows its own.
_CLI_SPELLINGS = (
    (re.compile(r"\b\w+=[^\s(),;]+ \(CLI: ([^)]+)\)"), r"\1"),   # "resume=True (CLI: --resume)" -> "--resume"
    (re.compile(r"(--[\w-]+) \(\w+=[^\s()]+\)"), r"\1"),          # "--fresh (fresh=True)" -> "--fresh"
    (re.compile(r"\bdownload=(True|False)\b"), lambda m: f"data.download={m.group(1).lower()}"),
    (re.compile(r"\bor pass verify=False to skip the check"),
     "or skip the check from Python (load_dataset(..., verify=False); the command line always checks)"),
    (re.compile(r"\bset by data_dir= or"), "set by data.data_dir (train --data-dir) or"),
)


def cli_spelling(message: str) -> str:
    """``message`` with Python spellings (``resume=True``, ``download=False``) in the CLI's."""
    for pattern, repl in _CLI_SPELLINGS:
        message = pattern.sub(repl, message)
    return message


class _OneLine(logging.Formatter):
    """``depthlab: message`` on one line, in CLI spellings: no logger name, no source line."""

    def format(self, record) -> str:
        return "depthlab: " + " ".join(cli_spelling(record.getMessage()).split())


@contextlib.contextmanager
def log_to_stderr():
    """While a command runs, the ``depthlab`` logger (e.g. a diagnostic skipped for a model) prints
    through this one handler, not again via the root logger; restored afterwards, since main() may
    run in-process (tests, notebooks)."""
    log, handler = logging.getLogger("depthlab"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
