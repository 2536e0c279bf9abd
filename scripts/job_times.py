"""Where a Snakemake run's wall time went, from its log (.snakemake/log/<date>.snakemake.log; docs/tuning.md).

    python scripts/job_times.py .snakemake/log/2026-12-03T222233.467767.snakemake.log [--jobs]

Prints the time per rule (sum of job durations), the core-seconds the jobs held (duration x threads), the lower
bound they set on the wall time at the run's core count (core-seconds / cores), and the wall time from the first
job's start to the last job's end; with --jobs also every job: start (seconds after the first), duration, threads,
rule and first output. Times come from the log's `[date]` lines, to the second; a job that did not finish (a failed
or interrupted run) is left out and counted. The log is read by narvl.report.runlog, as `narvl report --publish
--run-log` reads it.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from narvl.errors import NarvlError
from narvl.report import runlog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="a Snakemake log file")
    parser.add_argument("--jobs", action="store_true", help="also list every job")
    args = parser.parse_args(argv)
    try:
        text = runlog.read(args.log)
    except NarvlError as e:
        print(e, file=sys.stderr)
        return 1
    jobs, cores = runlog.parse_jobs(text), runlog.cores(text)
    done = [j for j in jobs if j.end is not None]
    if not done:
        print(f"{args.log}: no finished job in this log", file=sys.stderr)
        return 1
    t0 = done[0].start
    if args.jobs:
        print(f"{'start':>6} {'s':>5} {'thr':>3}  rule                       output")
        for j in done:
            print(f"{(j.start - t0).total_seconds():6.0f} {j.seconds:5.0f} {j.threads:3d}  {j.rule:26s} {j.output}")
        print()
    per_rule: dict[str, float] = collections.defaultdict(float)
    for j in done:
        per_rule[j.rule] += j.seconds
    for rule, seconds in sorted(per_rule.items(), key=lambda kv: -kv[1]):
        print(f"{rule:26s} {seconds:6.0f} s")
    wall = (max(j.end for j in done) - t0).total_seconds()
    core_seconds = sum(j.seconds * j.threads for j in done)
    print(f"\n{len(done)} jobs finished, {len(jobs) - len(done)} unfinished")
    print(f"wall time (first start to last end): {wall:.0f} s")
    print(f"core-seconds held by jobs: {core_seconds:.0f}")
    if cores:
        bound = core_seconds / cores
        print(f"lower bound at {cores} cores: {bound:.0f} s; idle: {wall - bound:.0f} s of wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
