"""Where a Snakemake run's wall time went, from its log (.snakemake/log/<date>.snakemake.log; docs/tuning.md).

    python scripts/job_times.py .snakemake/log/2026-12-03T222233.467767.snakemake.log [--jobs]

Prints the time per rule (sum of job durations), the core-seconds the jobs held (duration x threads), the lower
bound they set on the wall time at the run's core count (core-seconds / cores), and the wall time from the first
job's start to the last job's end; with --jobs also every job: start (seconds after the first), duration, threads,
rule and first output. Times come from the log's `[date]` lines, to the second; a job that did not finish (a failed
or interrupted run) is left out and counted.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import re
import sys
from dataclasses import dataclass
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
FIELD = re.compile(r"^\s+(output|jobid|threads): (.*)$")
FINISHED = re.compile(r"^Finished job(?:id:)? (\d+)")
CORES = re.compile(r"^Provided cores: (\d+)")


@dataclass
class Job:
    rule: str
    start: datetime.datetime
    output: str = ""
    threads: int = 1
    end: datetime.datetime | None = None

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def parse(text: str) -> tuple[list[Job], int | None]:
    """(every job that started, in order of start; the run's cores, None when the log does not say)."""
    stamp, current, cores = None, None, None
    jobs: dict[str, Job] = {}
    for line in text.splitlines():
        if m := STAMP.match(line):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := CORES.match(line):
            cores = int(m.group(1))
        elif m := RULE.match(line):
            current = Job(m.group(1), stamp)
        elif current is not None and (m := FIELD.match(line)):
            key, value = m.groups()
            if key == "output":
                current.output = value.split(", ")[0]
            elif key == "threads":
                current.threads = int(value)
            else:
                jobs[value] = current
        elif m := FINISHED.match(line):
            if m.group(1) in jobs:
                jobs[m.group(1)].end = stamp
        elif not line.startswith(" "):
            current = None  # the job's indented block has ended
    return sorted(jobs.values(), key=lambda j: j.start), cores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="a Snakemake log file")
    parser.add_argument("--jobs", action="store_true", help="also list every job")
    args = parser.parse_args(argv)
    try:
        jobs, cores = parse(args.log.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        print(f"{args.log}: cannot read: {e}", file=sys.stderr)
        return 1
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
