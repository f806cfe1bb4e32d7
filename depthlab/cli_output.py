"""How the command line talks: library log lines as one clean ``depthlab: ...`` line, library
messages in CLI spellings, and what an interrupt means for each command."""
from __future__ import annotations

import contextlib
import logging
import re
import sys


def interrupted(args, command) -> str:
    """What a KeyboardInterrupt that reached ``main`` means for this command, and how to go on
    (``command(args, argv)``: the command line as typed, with ``argv``)."""
    if args.command == "train":  # the first Ctrl-C returns normally; this is the second, or one before step 0
        again = [a for a in args.argv if a != "--overwrite"] + ([] if "--resume" in args.argv else ["--resume"])
        return f"stopped; the last checkpoint is kept; continue with `{command(args, again)}`"
    if args.command == "reproduce":
        again = "run the same command without --fresh" if args.fresh else "run the same command again"
        return (f"interrupted; finished runs are kept and the interrupted run was checkpointed; {again} to "
                f"continue")
    if args.command in ("demo", "remedies"):  # these retrain every run (overwrite), they do not resume
        where = args.out if args.command == "demo" else args.runs
        return (f"interrupted; the runs finished so far are kept under {where}, but running the same command "
                f"again trains every run from the start")
    if args.command == "sweep":
        return "sweep interrupted; finished runs are kept; run the same command again to resume the others"
    return "interrupted; nothing was lost"


# Library messages name Python spellings first, the CLI's in parentheses; the CLI shows its own.
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
    """``depthlab: message`` on one line: no logger name, no source line, CLI spellings."""

    def format(self, record) -> str:
        return "depthlab: " + " ".join(cli_spelling(record.getMessage()).split())


@contextlib.contextmanager
def log_to_stderr():
    """The ``depthlab`` logger (e.g. a diagnostic skipped for a model) prints through one handler of
    ours while a command runs, and not again through the root logger; restored afterwards, since
    main() may be called in-process (tests, notebooks)."""
    log = logging.getLogger("depthlab")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    propagate = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
