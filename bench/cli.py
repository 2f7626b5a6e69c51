"""Wall time of the CLI's list commands against ``celery --help``, measured in the same invocation.

Each round starts every command once as a fresh process, in an order that rotates from round to round
(interleaved), and the report gives each command's median and its ratio to ``celery --help``'s median.
``python -c "import sqlalchemy"`` is the floor: a command that reads the database cannot start faster.

    python bench/cli.py --rounds 10 [--approvals 50] [--json]

Runs on the embedded default (a SQLite file in a temporary ``HITL_HOME``); ``--approvals N`` first stores N
pending approvals (created ahead, no worker needed) so that the list has rows to print.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def commands() -> dict[str, list[str]]:
    """The commands timed, by label."""
    return {
        "celery --help": [str(BIN / "celery"), "--help"],
        "import sqlalchemy": [sys.executable, "-c", "import sqlalchemy"],
        "hitl approvals list": [str(BIN / "hitl"), "approvals", "list"],
        "hitl runs list": [str(BIN / "hitl"), "runs", "list"],
    }


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds of wall time ``argv`` took (it must exit 0)."""
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--approvals", type=int, default=0, help="pending approvals to store first (default 0)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="hitl-bench-cli-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["HITL_HOME"] = home
    for i in range(args.approvals):
        subprocess.run(
            [str(BIN / "hitl"), "approvals", "create", "review", "--idempotency-key", f"bench-{i}"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    cmds = commands()
    for argv in cmds.values():  # warm the page cache and the bytecode
        timed(argv, env)
    times: dict[str, list[float]] = {label: [] for label in cmds}
    labels = list(cmds)
    for r in range(args.rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            times[label].append(timed(cmds[label], env))
    base = statistics.median(times["celery --help"])
    report = {
        label: {
            "median_s": round(statistics.median(t), 3),
            "ratio_to_celery_help": round(statistics.median(t) / base, 2),
        }
        for label, t in times.items()
    }
    load = os.getloadavg()
    if args.json:
        print(
            json.dumps({"rounds": args.rounds, "approvals": args.approvals, "load": load, "figures": report}, indent=2)
        )
        return
    print(f"{args.rounds} rounds, {args.approvals} pending approvals, load average {load[0]:.2f}")
    print(f"{'command':<22} {'median s':>9} {'/ celery --help':>16}")
    for label, fig in report.items():
        print(f"{label:<22} {fig['median_s']:>9.3f} {fig['ratio_to_celery_help']:>16.2f}")
    print("target: hitl approvals list at most 0.70 of celery --help")


if __name__ == "__main__":
    main()
