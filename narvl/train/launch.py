"""Process launch: one command for people, Snakemake, DVC and Slurm.

`narvl train` runs in one of three ways, decided from the environment alone:

    under a launcher   RANK/WORLD_SIZE are set (torchrun, the deepspeed launcher): this process is one rank.
    under srun         an `srun` step with more than one task (SLURM_STEP_NUM_TASKS > 1): the Slurm variables are
                       mapped to RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and this process is one rank.
    plain              nothing set: with train.nproc > 1 the command re-executes itself under torchrun
                       (`python -m torch.distributed.run --standalone --nproc_per_node N -m narvl ...`); with
                       nproc == 1 it runs as the only rank (rank 0 of 1, a local rendezvous).

A Slurm batch script itself (sbatch, no step) and a one-task step count as plain: a job given several CPUs or GPUs
on one node then runs torchrun inside it.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from narvl.errors import NarvlError

SELF_LAUNCHED = "NARVL_SELF_LAUNCHED"  # set in the environment of the ranks torchrun starts for us


@dataclass(frozen=True)
class Placement:
    """Where this process sits: how it was started and its rank in the data-parallel group."""

    mode: str  # "launcher" | "srun" | "plain"
    rank: int
    local_rank: int
    world_size: int


# ------------------------------------------------------------------------------------------------ Slurm mapping
def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist such as `gpu[01-03,7],login1` into host names (as `scontrol show hostnames`)."""
    hosts: list[str] = []
    # split on commas that are not inside brackets
    parts, depth, current = [], 0, ""
    for ch in nodelist.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    for part in parts:
        m = re.fullmatch(r"([^\[\]]*)\[([^\]]+)\](.*)", part)
        if not m:
            if not re.fullmatch(r"[^\[\],]+", part):
                raise NarvlError(f"SLURM nodelist {nodelist!r}: cannot parse {part!r}")
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        if "[" in suffix:
            raise NarvlError(f"SLURM nodelist {nodelist!r}: nested or repeated brackets in {part!r} are not supported")
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-", 1)
                if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                    raise NarvlError(f"SLURM nodelist {nodelist!r}: bad range {r!r}")
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            elif r.isdigit():
                hosts.append(f"{prefix}{r}{suffix}")
            else:
                raise NarvlError(f"SLURM nodelist {nodelist!r}: bad range {r!r}")
    if not hosts:
        raise NarvlError(f"SLURM nodelist {nodelist!r}: no hosts")
    return hosts


def is_srun_rank(env: Mapping[str, str]) -> bool:
    """True inside an srun step of several tasks (not in the batch script, not in a one-task step)."""
    return "RANK" not in env and int(env.get("SLURM_STEP_NUM_TASKS", "0") or 0) > 1


def slurm_to_torch_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed variables of this srun task, from Slurm's.

    RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID, WORLD_SIZE = SLURM_STEP_NUM_TASKS (else SLURM_NTASKS),
    MASTER_ADDR = first host of SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST / SLURM_NODELIST), MASTER_PORT kept
    when set, else derived from the job and step ids so that every task of the step agrees on it.
    """
    missing = [k for k in ("SLURM_PROCID", "SLURM_LOCALID") if k not in env]
    if missing:
        raise NarvlError(f"srun environment: {', '.join(missing)} not set")
    world = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not world or not nodelist:
        raise NarvlError("srun environment: SLURM_NTASKS/SLURM_STEP_NUM_TASKS or SLURM_NODELIST not set")
    out = {
        "RANK": env["SLURM_PROCID"],
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "WORLD_SIZE": str(int(world)),
        "MASTER_ADDR": env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0],
    }
    if "SLURM_NTASKS_PER_NODE" in env and env["SLURM_NTASKS_PER_NODE"].isdigit():
        out["LOCAL_WORLD_SIZE"] = env["SLURM_NTASKS_PER_NODE"]
    if env.get("MASTER_PORT"):
        out["MASTER_PORT"] = env["MASTER_PORT"]
    else:
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        step = int(env.get("SLURM_STEP_ID", "0") or 0)
        out["MASTER_PORT"] = str(20000 + (job * 7 + step) % 20000)
    return out


# ------------------------------------------------------------------------------------------------- placement
def placement(env: Mapping[str, str] | None = None) -> Placement:
    env = os.environ if env is None else env
    if "RANK" in env:
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", "0"))
        except (KeyError, ValueError) as e:
            raise NarvlError(f"RANK is set but WORLD_SIZE/LOCAL_RANK are missing or not integers: {e}") from e
        return Placement("launcher", rank, local, world)
    if is_srun_rank(env):
        mapped = slurm_to_torch_env(env)
        return Placement("srun", int(mapped["RANK"]), int(mapped["LOCAL_RANK"]), int(mapped["WORLD_SIZE"]))
    return Placement("plain", 0, 0, 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def become_rank(env: dict[str, str] | None = None) -> Placement:
    """Fill the torch.distributed variables of this process (srun mapping, or a one-process group)."""
    env = os.environ if env is None else env
    where = placement(env)
    if where.mode == "srun":
        env.update(slurm_to_torch_env(env))
    elif where.mode == "plain":
        env.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": env.get("MASTER_PORT") or str(free_port())})
    return where


def torchrun_command(nproc: int, narvl_argv: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m narvl <argv>`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "narvl", *narvl_argv]


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "GOTO_NUM_THREADS")


def torchrun_env(nproc: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the torchrun that narvl starts itself.

    The ranks find this checkout of narvl through PYTHONPATH and share out the command's threads: OMP_NUM_THREADS
    when set (Snakemake sets it to the job's threads), else the cores, divided by nproc, applied to every BLAS and
    OpenMP thread pool (oversubscribed threads spin and can slow training many times over).
    """
    env = dict(environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env[SELF_LAUNCHED] = "1"
    total = int(env["OMP_NUM_THREADS"]) if env.get("OMP_NUM_THREADS", "").isdigit() else (os.cpu_count() or 1)
    per_rank = str(max(1, total // nproc))
    # every thread pool a rank may use, not only OpenMP's: Snakemake also sets MKL_NUM_THREADS and friends to the
    # job's threads, and MKL at 2 threads per rank on 2 cores made CPU training 10x slower (measured)
    for var in THREAD_VARS:
        env[var] = per_rank
    return env


def exec_torchrun(nproc: int, narvl_argv: list[str]) -> None:
    """Replace this process by torchrun running `narvl <argv>` on `nproc` local ranks (never returns); the ranks
    die with torchrun (see `die_with_parent`)."""
    cmd = torchrun_command(nproc, narvl_argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, torchrun_env(nproc, os.environ))


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this rank when its parent (torchrun) dies, so `kill -9` of the command stops all ranks."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent already died before prctl
            os.kill(os.getpid(), signal.SIGKILL)
    except OSError:
        pass
