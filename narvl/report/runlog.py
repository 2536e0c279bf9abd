"""Reading a Snakemake run's log (.snakemake/log/<date>.snakemake.log): how long the run took and where its time went.

`run_info` is what `narvl report --publish --run-log` records in machine.json; `parse_jobs` is what
scripts/job_times.py prints (docs/tuning.md). Both read the log as Snakemake 9 writes it: a `[date]` line before each
job's block (`rule <name>:` with indented `output:`, `jobid:`, `threads:` when more than one) and before each
`Finished jobid: N`, `Provided cores: N` at the start, `N of N steps (100%) done` and `Elapsed time: [D day(s), ]
H:MM:SS.ffffff` at the end of a run that finished.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from narvl.errors import NarvlError

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
FIELD = re.compile(r"^\s+(output|jobid|threads): (.*)$")
FINISHED = re.compile(r"^Finished job(?:id:)? (\d+)")
CORES = re.compile(r"^Provided cores: (\d+)", re.MULTILINE)
ALL_DONE = re.compile(r"^(\d+) of (\d+) steps \(100%\) done$", re.MULTILINE)
ELAPSED = re.compile(r"^Elapsed time: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$", re.MULTILINE)


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


def read(log: Path) -> str:
    try:
        return log.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise NarvlError(f"{log}: cannot read the Snakemake log: {e}") from e


def cores(text: str) -> int | None:
    """The cores the run was given (`Provided cores: N`, also `N (use --cores to define parallelism)`)."""
    m = CORES.search(text)
    return int(m.group(1)) if m else None


def parse_jobs(text: str) -> list[Job]:
    """Every job that started, in order of start (`end` None for one that did not finish)."""
    stamp, current = None, None
    jobs: dict[str, Job] = {}
    for line in text.splitlines():
        if m := STAMP.match(line):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
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
    return sorted(jobs.values(), key=lambda j: j.start)


def run_info(log: Path) -> dict[str, Any]:
    """How long the Snakemake run took: Snakemake's own `Elapsed time` (from setting the workflow up to the end; it
    leaves out Python's start-up), the cores it was given and the jobs it ran. Only the log of a run that finished
    every job it started is accepted."""
    text = read(log)
    if re.search(r"^Nothing to be done", text, re.MULTILINE):
        raise NarvlError(f"{log}: Snakemake had nothing to do in this run: publish the log of the run that made "
                         "the results")
    if re.search(r"^Error in rule ", text, re.MULTILINE):
        raise NarvlError(f"{log}: a job of this run failed ('Error in rule'): publish the log of a run that finished")
    done, elapsed = ALL_DONE.findall(text), ELAPSED.search(text)
    if elapsed is None or not done:
        raise NarvlError(f"{log}: no 'N of N steps (100%) done' and 'Elapsed time' lines: not the log of a Snakemake "
                         "run that finished")
    days, hours, minutes, seconds = elapsed.groups()
    return {"log": log.name,
            "elapsed_s": round(int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds), 1),
            "jobs": int(done[-1][0]), "cores": cores(text)}
