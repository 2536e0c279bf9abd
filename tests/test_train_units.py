"""Training without DeepSpeed: Slurm/torchrun launch mapping, batch and schedule arithmetic, checkpoint
completeness, and the bad-input errors of `narvl train` (raised before any work is done)."""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from narvl.cli import main as cli_main
from narvl.errors import NarvlError
from narvl.params import load
from narvl.train import checkpoint as ck
from narvl.train import launch
from narvl.train import main as train_main
from narvl.train.config import WarmupCosine, check_batch, deepspeed_config
from tests import train_inputs as T

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------ Slurm
@pytest.mark.parametrize("nodelist, hosts", [
    ("localhost", ["localhost"]),
    ("node[01-03,7]", ["node01", "node02", "node03", "node7"]),
    ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("n[1-2],m[08-10]", ["n1", "n2", "m08", "m09", "m10"]),
    ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
])
def test_nodelist_expansion(nodelist, hosts):
    assert launch.expand_nodelist(nodelist) == hosts


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed")
@pytest.mark.parametrize("nodelist", ["node[01-03,7]", "a1,b[2-3],c", "n[1-2],m[08-10]", "x[098-101]"])
def test_nodelist_expansion_agrees_with_scontrol(nodelist):
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    assert launch.expand_nodelist(nodelist) == out.stdout.split()


def test_bad_nodelist_is_a_clear_error():
    with pytest.raises(NarvlError, match="nodelist"):
        launch.expand_nodelist("node[3-1]")


SRUN_TASK_3 = {  # task 3 of an `srun --nodes 2 --ntasks-per-node 2` step
    "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0", "SLURM_NTASKS_PER_NODE": "2",
}


def test_srun_task_maps_to_torch_distributed_env():
    env = launch.slurm_to_torch_env(SRUN_TASK_3)
    assert env["RANK"] == "3" and env["LOCAL_RANK"] == "1" and env["WORLD_SIZE"] == "4"
    assert env["MASTER_ADDR"] == "gpu07" and env["LOCAL_WORLD_SIZE"] == "2"
    assert 20000 <= int(env["MASTER_PORT"]) < 40000
    # every task of the step agrees on the rendezvous
    task0 = dict(SRUN_TASK_3, SLURM_PROCID="0", SLURM_LOCALID="0")
    assert launch.slurm_to_torch_env(task0)["MASTER_PORT"] == env["MASTER_PORT"]
    assert launch.slurm_to_torch_env(dict(SRUN_TASK_3, MASTER_PORT="12345"))["MASTER_PORT"] == "12345"


def test_srun_without_step_variables_falls_back_to_job_ones():
    env = {k: v for k, v in SRUN_TASK_3.items() if k not in ("SLURM_STEP_NODELIST",)}
    env["SLURM_NODELIST"] = "cn[3-4]"
    assert launch.slurm_to_torch_env(env)["MASTER_ADDR"] == "cn3"


def test_placement_modes():
    assert launch.placement({}).mode == "plain"
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NODELIST": "n[1-2]", "SLURM_JOB_ID": "1"}
    assert launch.placement(batch_script).mode == "plain"  # sbatch script: not a rank, torchrun inside
    one_task_step = dict(batch_script, SLURM_STEP_NUM_TASKS="1", SLURM_LOCALID="0")
    assert launch.placement(one_task_step).mode == "plain"
    p = launch.placement(SRUN_TASK_3)
    assert (p.mode, p.rank, p.local_rank, p.world_size) == ("srun", 3, 1, 4)
    p = launch.placement({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", **SRUN_TASK_3})
    assert (p.mode, p.rank, p.world_size) == ("launcher", 1, 2)  # torchrun inside srun wins


def test_become_rank_fills_env():
    env = dict(SRUN_TASK_3)
    launch.become_rank(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("3", "4", "gpu07")
    env = {}
    launch.become_rank(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("0", "1", "0") and int(env["MASTER_PORT"]) > 0


def test_torchrun_command():
    cmd = launch.torchrun_command(2, ["train", "--out", "runs/x"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "narvl",
                       "train", "--out", "runs/x"]


def test_torchrun_env_shares_out_threads_and_finds_this_checkout():
    env = launch.torchrun_env(2, {"OMP_NUM_THREADS": "8", "PYTHONPATH": "/x"})
    assert env["OMP_NUM_THREADS"] == "4" and env[launch.SELF_LAUNCHED] == "1"
    assert env["PYTHONPATH"].split(":") == [str(ROOT), "/x"]
    assert launch.torchrun_env(4, {"OMP_NUM_THREADS": "2"})["OMP_NUM_THREADS"] == "1"
    # Snakemake sets MKL/OpenBLAS threads to the job's threads too: each rank must get its share of every pool
    shared = launch.torchrun_env(2, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    assert all(shared[var] == "1" for var in launch.THREAD_VARS)
    assert int(launch.torchrun_env(2, {})["OMP_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 2)


# --------------------------------------------------------------------------------------- batch and schedule
def test_extensions_dir_and_ninja_are_this_environments(tmp_path, monkeypatch):
    """DeepSpeed's op is built with the interpreter's own ninja into a folder of this environment: two ninja versions
    would rebuild each other's op, two environments would share a folder."""
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "ninja").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    train_main.use_private_extensions_dir("cpu")
    assert os.environ["PATH"] == f"{bindir}:/usr/bin:/bin"
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    assert Path(os.environ["TORCH_EXTENSIONS_DIR"]).name.startswith("narvl-cpu-")
    train_main.use_private_extensions_dir("cpu")  # again (torchrun's ranks): PATH is not extended twice
    assert os.environ["PATH"] == f"{bindir}:/usr/bin:/bin"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))  # the user's choice wins
    train_main.use_private_extensions_dir("cpu")
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path / "mine")


def test_adamw_multi_tensor_updates_equal_the_loop_bit_for_bit():
    import torch

    from narvl.model import build_model
    from narvl.train.engine import adamw, param_groups

    train = load(ROOT / "params" / "train.yaml")
    models = []
    for foreach in (True, False):
        torch.manual_seed(0)
        model = build_model("nar", load(ROOT / "params" / "model.yaml").arch(), 50, 8,
                            {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "blank": 4})
        groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, train.weight_decay)]
        opt = adamw(groups, train) if foreach else torch.optim.AdamW(
            groups, lr=train.lr, betas=tuple(train.adam_betas), eps=train.adam_eps, foreach=False)
        assert opt.defaults["foreach"] is foreach
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        models.append(model)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.equal(a, b), name


def test_batch_arithmetic():
    train = load(ROOT / "params" / "train.yaml")
    check_batch(train, train.global_batch // (train.micro_batch * train.grad_accum), "x")
    with pytest.raises(NarvlError, match=r"micro_batch \(32\) x train.grad_accum \(1\) x world size \(3\) = 96"):
        check_batch(train, 3, "x")
    pretrain = train.for_task("pretrain")  # the 2-process multi-task stage
    check_batch(pretrain, pretrain.nproc, "x")
    with pytest.raises(NarvlError, match=r"micro_batch \(16\) x train.grad_accum \(1\) x world size \(3\) = 48"):
        check_batch(pretrain, 3, "x")


def test_deepspeed_config_follows_params():
    train = load(ROOT / "params" / "train.yaml")
    cfg = deepspeed_config(train)
    assert cfg["train_batch_size"] == train.global_batch
    assert cfg["train_micro_batch_size_per_gpu"] == train.micro_batch
    assert cfg["gradient_accumulation_steps"] == train.grad_accum
    assert cfg["zero_optimization"]["stage"] == train.zero_stage
    assert cfg["gradient_clipping"] == train.grad_clip


def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def _lr_run(train, total: int):
    """What build_engine makes, without DeepSpeed: AdamW (two groups) + the LambdaLR of lr_schedule."""
    import torch

    from narvl.train.engine import lr_schedule

    groups = [{"params": [torch.nn.Parameter(torch.ones(2, 2))]}, {"params": [torch.nn.Parameter(torch.ones(2))]}]
    opt = torch.optim.AdamW(groups, lr=train.lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(train, total))


def _lr_steps(opt, scheduler, n: int) -> tuple[list[float], list[float]]:
    """n optimizer steps as engine.step() takes them -> (LR each step ran at, LR logged after each step)."""
    ran, logged = [], []
    for _ in range(n):
        lrs = {g["lr"] for g in opt.param_groups}
        assert len(lrs) == 1
        ran.append(lrs.pop())
        opt.step()
        scheduler.step()
        logged.append(scheduler.get_last_lr()[0])
    return ran, logged


def _lr_resumed(train, total: int, saved):
    """A new run of `total` steps that loaded a checkpoint, in DeepSpeed's order: optimizer, then scheduler."""
    opt, scheduler = _lr_run(train, total)
    opt.load_state_dict(copy.deepcopy(saved[0]))
    scheduler.load_state_dict(copy.deepcopy(saved[1]))
    return opt, scheduler


def test_resumed_lr_schedule_is_rebuilt_for_the_current_params():
    """Saved at step 6 of a 10-step run (warm-up 2), resumed with steps: 20. resume_lr_scheduler replaces the
    restored scheduler (which carries the 10-step schedule) by a new one with the current params' schedule: the LR
    after each later step k is lr x WarmupCosine(2, 20, 0.1)(k); every LR, and the state the next checkpoint saves,
    are those of the former in-place patch of the restored lambda. With unchanged params the resumed LRs are
    bit-identical to an uninterrupted run's."""
    import dataclasses
    import warnings
    from types import SimpleNamespace

    from narvl.train.engine import resume_lr_scheduler

    train = dataclasses.replace(load(ROOT / "params" / "train.yaml"), lr=3e-3, warmup_steps=2, min_lr_ratio=0.1)
    opt, scheduler = _lr_run(train, 10)
    _lr_steps(opt, scheduler, 6)
    saved = copy.deepcopy((opt.state_dict(), scheduler.state_dict()))

    old_opt, old = _lr_resumed(train, 20, saved)  # the code before: patch the restored lambda in place
    old.lr_lambdas[0].__dict__.update(vars(WarmupCosine(train.warmup_steps, 20, train.min_lr_ratio)))
    old_ran, old_logged = _lr_steps(old_opt, old, 14)

    new_opt, restored = _lr_resumed(train, 20, saved)
    engine = SimpleNamespace(lr_scheduler=restored)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "lr_scheduler.step() before optimizer.step()"
        new = resume_lr_scheduler(engine, train, 20)
        new_ran, new_logged = _lr_steps(new_opt, new, 14)
    assert engine.lr_scheduler is new and new is not restored and new.optimizer is new_opt
    assert restored.lr_lambdas[0].total == 10  # the restored one was replaced, not patched

    f20, f10 = WarmupCosine(2, 20, 0.1), WarmupCosine(2, 10, 0.1)
    assert new_logged == old_logged == [3e-3 * f20(k) for k in range(7, 21)]
    # the step right after the checkpoint runs at the LR restored with the optimizer, as before
    assert new_ran == old_ran == [3e-3 * f10(6)] + [3e-3 * f20(k) for k in range(7, 20)]
    # the next checkpoint saves the same state, with the current schedule
    state = new.state_dict()
    assert state == old.state_dict() and state["last_epoch"] == 20 and state["lr_lambdas"] == [vars(f20)] * 2

    # unchanged params: exactly an uninterrupted 10-step run
    opt, scheduler = _lr_run(train, 10)
    ref_ran, ref_logged = _lr_steps(opt, scheduler, 10)
    opt, restored = _lr_resumed(train, 10, saved)
    ran, logged = _lr_steps(opt, resume_lr_scheduler(SimpleNamespace(lr_scheduler=restored), train, 10), 4)
    assert ran == ref_ran[6:] and logged == ref_logged[6:]


# ------------------------------------------------------------------------------------------------ checkpoints
def fake_checkpoint(ckpt_dir: Path, step: int, complete: bool) -> Path:
    d = ckpt_dir / ck.tag_for(step)
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        ck.mark_complete(d, {"step": step})
    return d


def test_only_marked_checkpoints_count_and_prune_keeps_newest(tmp_path):
    for step, complete in ((4, True), (8, True), (12, True), (16, False)):
        fake_checkpoint(tmp_path, step, complete)
    complete, incomplete = ck.checkpoints(tmp_path)
    assert [s for s, _ in complete] == [4, 8, 12]
    assert [p.name for p in incomplete] == ["step_00000016"]
    assert ck.latest_complete(tmp_path)[0] == 12
    removed = ck.prune(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step_00000004"] and not (tmp_path / "step_00000004").exists()
    assert [s for s, _ in ck.checkpoints(tmp_path)[0]] == [8, 12]


def run_info(**identity):
    ident = {"kind": "nar", "task": "caption", "arch": {"d_model": 32}, "vocab_size": 100, **identity}
    return {"identity": ident, "identity_hash": ck.identity_hash(ident), "zero_stage": 0, "world_size": 2}


def test_compatibility_check(tmp_path):
    ck.check_compatible(tmp_path, run_info())  # nothing there yet
    ck.write_run_info(tmp_path, run_info())
    fake_checkpoint(tmp_path, 4, True)
    ck.check_compatible(tmp_path, run_info())
    ck.check_compatible(tmp_path, dict(run_info(), world_size=4))  # ZeRO 0: any world size
    with pytest.raises(NarvlError, match=r"another model configuration.*arch: checkpoint \{'d_model': 32\} vs "
                                         r"now \{'d_model': 64\}"):
        ck.check_compatible(tmp_path, run_info(arch={"d_model": 64}))
    with pytest.raises(NarvlError, match="ZeRO stage 0"):
        ck.check_compatible(tmp_path, dict(run_info(), zero_stage=2))


# --------------------------------------------------------------------------------- bad input, before any work
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("train-inputs")
    return {"shards": T.make_shards(d / "shards"), "tokenizer": T.make_tokenizer(d / "tokenizer.json"),
            "params": T.make_params(ROOT / "params", d / "params"), "dir": d}


def train_cli(inputs, capsys, **override):
    args = {"params": inputs["params"], "task": "caption", "kind": "nar", "shards": inputs["shards"],
            "tokenizer": inputs["tokenizer"], "out": inputs["dir"] / "run", **override}
    argv = ["train"] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
    t0 = time.perf_counter()
    code = cli_main(argv)
    return code, capsys.readouterr().err, time.perf_counter() - t0


def test_inconsistent_batch_settings(inputs, capsys, tmp_path):
    params = T.make_params(ROOT / "params", tmp_path / "params", micro_batch=3)
    code, err, _ = train_cli(inputs, capsys, params=params, out=tmp_path / "run")
    assert code == 2
    assert "inconsistent batch settings: train.micro_batch (3) x train.grad_accum (1) x world size (2) = 6" in err
    assert "global_batch is 8" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("breakage, message", [
    ("no-folder", "no such shard folder"),
    ("no-sizes", "sizes.json: missing"),
    ("no-shard", "caption-train-000001.tar is missing"),
    ("no-val", "no split 'val'"),
    ("other-task", "is not a 'caption' shard"),
])
def test_bad_shards(inputs, capsys, tmp_path, breakage, message):
    shards = tmp_path / "shards"
    if breakage != "no-folder":
        shutil.copytree(inputs["shards"], shards)
        sizes = json.loads((shards / "sizes.json").read_text())
        if breakage == "no-sizes":
            (shards / "sizes.json").unlink()
        elif breakage == "no-shard":
            (shards / "caption-train-000001.tar").unlink()
        elif breakage == "no-val":
            del sizes["val"]
        elif breakage == "other-task":
            sizes["train"]["shards"] = ["vqa-train-000000.tar"]
        if breakage in ("no-val", "other-task"):
            (shards / "sizes.json").write_text(json.dumps(sizes))
    code, err, _ = train_cli(inputs, capsys, shards=shards, out=tmp_path / "run")
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()


def test_missing_tokenizer(inputs, capsys, tmp_path):
    code, err, _ = train_cli(inputs, capsys, tokenizer=tmp_path / "nope.json", out=tmp_path / "run")
    assert code == 2 and "nope.json" in err and "tokenizer" in err
    assert not (tmp_path / "run").exists()


def test_fp16_on_cpu_is_refused(inputs, capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU")
    params = T.make_params(ROOT / "params", tmp_path / "params", precision="fp16")
    code, err, _ = train_cli(inputs, capsys, params=params, out=tmp_path / "run")
    assert code == 2 and "fp16 needs a GPU" in err


def test_checkpoint_of_another_model_config(inputs, capsys, tmp_path):
    """A run folder whose checkpoints were made for d_model 48 refuses a d_model 32 run, naming the difference."""
    from narvl.train.main import prepare
    from argparse import Namespace

    out = tmp_path / "run"
    args = Namespace(params=str(inputs["params"]), task="caption", kind="nar", shards=str(inputs["shards"]),
                     tokenizer=str(inputs["tokenizer"]), out=str(out))
    info = prepare(args, 2, False).run_info
    info["identity"]["arch"] = dict(info["identity"]["arch"], d_model=48)
    info["identity_hash"] = ck.identity_hash(info["identity"])
    ck.write_run_info(out / "checkpoints", info)
    fake_checkpoint(out / "checkpoints", 4, True)
    before = sorted(p.name for p in out.rglob("*"))
    code, err, _ = train_cli(inputs, capsys, out=out)
    assert code == 2
    assert "belong to another model configuration" in err and "'d_model': 48" in err and "'d_model': 32" in err
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing touched


def test_other_kind_is_another_model(inputs, capsys, tmp_path):
    from argparse import Namespace

    from narvl.train.main import prepare

    out = tmp_path / "run"
    args = Namespace(params=str(inputs["params"]), task="caption", kind="ar", shards=str(inputs["shards"]),
                     tokenizer=str(inputs["tokenizer"]), out=str(out))
    ck.write_run_info(out / "checkpoints", prepare(args, 2, False).run_info)
    fake_checkpoint(out / "checkpoints", 4, True)
    code, err, _ = train_cli(inputs, capsys, out=out)
    assert code == 2 and "kind: checkpoint 'ar' vs now 'nar'" in err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_distilled_vqa_target_gets_weight_one_from_the_loader(inputs):
    """The loader weights a VQA target by its soft score; a teacher answer outside the annotators' must not get 0."""
    from narvl.data.loader import Collator
    from narvl.data.tokenizer import Tokenizer
    from narvl.train.distill import rewrite_meta

    meta = {"id": "train_00000001", "task": "vqa", "prompt": "what colour is the square?", "target": "red",
            "answers": ["red"] * 7 + ["blue"] * 3, "scores": {"red": 1.0, "blue": 0.9}}
    new = rewrite_meta(meta, "green", "vqa")
    assert new["target"] == "green" and new["original_target"] == "red"
    assert new["original_scores"] == meta["scores"] and new["answers"] == meta["answers"]
    collate = Collator(Tokenizer.load(inputs["tokenizer"]), "vqa", 32, 16, 4)
    assert collate.target(meta)[1] == 1.0 and collate.target(dict(meta, target="green"))[1] == 0.0
    assert collate.target(new)[1] == 1.0
    caption = rewrite_meta({"target": "a red square", "references": ["x"]}, "a red circle", "caption")
    assert caption == {"target": "a red circle", "original_target": "a red square", "references": ["x"]}


def test_seed_option_reaches_the_ranks_and_the_params():
    """`narvl train --seed N` (pipeline.seeds) is passed on to the torchrun ranks and replaces train.seed."""
    import argparse

    from narvl.train import main as train_main

    parser = argparse.ArgumentParser()
    train_main.add_arguments(parser)
    base = ["--params", "params", "--task", "vqa", "--kind", "ar", "--shards", "s", "--tokenizer", "t.json",
            "--out", "runs/vqa-ar-seed3"]
    args = parser.parse_args(base + ["--seed", "3"])
    argv = train_main.narvl_argv(args)
    assert argv[-2:] == ["--seed", "3"] and parser.parse_args(argv[1:]).seed == 3
    assert "--seed" not in train_main.narvl_argv(parser.parse_args(base))


# --------------------------------------------------------------------------------------------- train.init_resnet
def test_init_resnet_takes_torchvision_weights_and_refuses_what_does_not_fit(tmp_path):
    """OFA's resnet_model_path: an ImageNet ResNet in torchvision's names loads into the encoder's ResNet (its layer4
    and fc, which OFA cuts, are ignored); a file for another width, a non-state-dict and a pickle that would run code
    are refused naming the file."""
    import pickle

    import torch
    import torchvision

    from narvl.model.resnet import ResNet
    from narvl.train.init import load_resnet

    tv = torchvision.models.resnet50()
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    ours = ResNet([3, 4, 6], 64)
    assert "ResNet" in load_resnet(path, ours)
    assert all(torch.equal(v, tv.state_dict()[k]) for k, v in ours.state_dict().items())
    with pytest.raises(NarvlError, match=r"resnet50.pth: train.init_resnet does not fit .*shapes differ: bn1"):
        load_resnet(path, ResNet([3, 4, 6], 8))
    torch.save({"conv1.weight": "not a tensor"}, tmp_path / "strings.pt")
    with pytest.raises(NarvlError, match=r"strings.pt: train.init_resnet: expected a ResNet state dict"):
        load_resnet(tmp_path / "strings.pt", ours)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(NarvlError, match=r"list.pt: train.init_resnet: expected a ResNet state dict"):
        load_resnet(tmp_path / "list.pt", ours)

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(NarvlError, match="evil.pt"):
        load_resnet(tmp_path / "evil.pt", ours)


def test_pretrain_resnet_refuses_bad_values_naming_the_file(tmp_path, capsys):
    """`narvl pretrain-resnet` with train.resnet_pretrain.steps 0, or scenes that are not whole 16-pixel cells: a
    NarvlError naming train.yaml or data.yaml, nothing written."""
    params = T.make_params(ROOT / "params", tmp_path / "params",
                           resnet_pretrain={"scenes": 8, "test_scenes": 4, "steps": 0, "batch": 4, "lr": 1.0e-3})
    out = tmp_path / "out" / "resnet.pt"
    assert cli_main(["pretrain-resnet", "--params", str(params), "--out", str(out)]) == 2
    assert re.search(r"params/train.yaml: train.resnet_pretrain: .* at least 1", capsys.readouterr().err)
    assert not out.exists()

    # the per-cell targets need scenes of whole 16-pixel cells
    T.edit_yaml(params / "train.yaml", resnet_pretrain={"scenes": 8, "test_scenes": 4, "steps": 1, "batch": 4,
                                                        "lr": 1.0e-3})
    data = yaml.safe_load((params / "data.yaml").read_text())
    data["data"]["synth"]["image_size"] = 100
    (params / "data.yaml").write_text(yaml.safe_dump(data))
    assert cli_main(["pretrain-resnet", "--params", str(params), "--out", str(out)]) == 2
    assert re.search(r"params/data.yaml: data.synth.image_size 100: .* a multiple of 16 pixels",
                     capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize("pretrain, kind, message", [
    ({"steps": 0, "weights": {"caption": 1.0}}, "ar", r"train.pretrain.steps = 0 must be at least 1"),
    ({"steps": 4, "weights": {"caption": 0.0}}, "ar", r"train.pretrain.weights = .*one at least positive"),
    ({"steps": 4, "weights": {"caption": -1.0, "vqa": 1.0}}, "ar", r"every weight must be 0 or more"),
    ({"steps": 4, "weights": {"caption": 1.0}}, "nar", r"--task pretrain trains an AR model"),
    ({"steps": 4, "weights": {"caption": 1.0}, "region": -1.0}, "ar", r"train.pretrain.region = -1.0 must be 0 or "
                                                                        r"more"),
    ({"steps": 4, "weights": {"caption": 1.0, "vqa": 1.0}}, "ar", r"vqa: no such shard folder"),
    ({"steps": 4, "weights": {"caption": 1.0, "vqa": 0.0}}, "ar:vqa", r"--tasks vqa: vqa not among the tasks of "
                                                                       r"train.pretrain.weights with a positive weight"),
])
def test_pretrain_refuses_bad_values_naming_the_file(inputs, capsys, tmp_path, pretrain, kind, message):
    """`narvl train --task pretrain`: bad train.pretrain values, a NAR kind or a task without its shard folder under
    --shards are refused before any work, and nothing is written."""
    root = tmp_path / "shards"
    root.mkdir()
    (root / "caption").symlink_to(inputs["shards"])
    params = T.make_params(ROOT / "params", tmp_path / "params", pretrain=pretrain)
    kind, _, mix = kind.partition(":")
    code, err, _ = train_cli(inputs, capsys, params=params, task="pretrain", kind=kind, shards=root,
                             out=tmp_path / "run", **({"tasks": mix} if mix else {}))
    assert code == 2 and re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_batch_settings_of_a_task_override_are_named(inputs, capsys, tmp_path):
    """The pretraining's own nproc and micro_batch (train.task_overrides.pretrain) must fit the global batch too;
    the error says that the override is where the numbers come from."""
    root = tmp_path / "shards"
    root.mkdir()
    (root / "caption").symlink_to(inputs["shards"])
    params = T.make_params(ROOT / "params", tmp_path / "params", pretrain={"steps": 4, "weights": {"caption": 1.0}},
                           task_overrides={"pretrain": {"nproc": 2, "micro_batch": 16}})
    code, err, _ = train_cli(inputs, capsys, params=params, task="pretrain", kind="ar", shards=root,
                             out=tmp_path / "run")
    assert code == 2 and re.search(r"train.yaml \(with train.task_overrides.pretrain\): inconsistent batch settings: "
                                   r"train.micro_batch \(16\) x train.grad_accum \(1\) x world size \(2\) = 32, "
                                   r"but train.global_batch is 8", err), err
    assert not (tmp_path / "run").exists()


def test_region_samples_need_grounding_shards_with_categories(inputs, capsys, tmp_path):
    """train.pretrain.region reads the grounding shards' `category`: shards without it (OFA's TSV files, or written
    before narvl kept categories) are refused before any work, naming the folder and the way out; without grounding
    among the mixed tasks there are no region samples and nothing to check."""
    root = tmp_path / "shards"
    root.mkdir()
    (root / "caption").symlink_to(inputs["shards"])
    T.make_grounding_shards(root / "grounding", category=False)
    params = T.make_params(ROOT / "params", tmp_path / "params",
                           pretrain={"steps": 4, "weights": {"caption": 1.0, "grounding": 1.0}, "region": 0.5})
    code, err, _ = train_cli(inputs, capsys, params=params, task="pretrain", kind="ar", shards=root,
                             out=tmp_path / "run")
    assert code == 2 and re.search(r"train.pretrain.region = region samples, but .*grounding's training samples "
                                   r"name no category .*train.pretrain.region: 0", err), err
    assert not (tmp_path / "run").exists()
    from narvl.train.main import prepare

    args = argparse.Namespace(params=str(params), task="pretrain", kind="ar", shards=str(root), tasks="caption",
                              tokenizer=str(inputs["tokenizer"]), out=str(tmp_path / "run"), seed=None, init=None,
                              init_resnet=None)
    setup = prepare(args, 2, False)
    assert setup.weights == {"caption": 1.0} and set(setup.sources) == {"caption"}
    shutil.rmtree(root / "grounding")
    T.make_grounding_shards(root / "grounding")
    setup = prepare(argparse.Namespace(**{**vars(args), "tasks": None}), 2, False)
    assert setup.weights == {"caption": 1.0, "grounding": 1.0, "region": 0.5}
    region = setup.sources["region"]
    assert region.task == "grounding" and region.folder == root / "grounding" and region.rewrite is not None


def test_tasks_is_refused_outside_the_multi_task_stage(inputs, capsys, tmp_path):
    code, err, _ = train_cli(inputs, capsys, tasks="caption", out=tmp_path / "run")
    assert code == 2 and "--tasks is for --task pretrain only (this run trains caption alone)" in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------- narvl pretrain-resnet
def test_resnet_pretraining_labels_each_cell_with_the_object_covering_it():
    """`narvl pretrain-resnet`'s targets: per 16-px cell of the stride-16 grid, the shape, colour and size of the
    object covering most of it (at least 8% of the cell), background (0) elsewhere."""
    import torch

    from narvl.synth import scene as S
    from narvl.train.pretrain_resnet import cell_labels

    # a 20x20 square filling cell (row 1, col 1) and 2 px into each neighbour: a 16x2 strip of an edge neighbour is
    # 12.5% of it (labelled), a 2x2 corner 1.6% (not); a triangle mostly in cell (0, 2), 1 px into the row below
    square = S.Obj("square", "red", "large", (14.0, 14.0, 34.0, 14.0, 34.0, 34.0, 14.0, 34.0), (200, 0, 0))
    triangle = S.Obj("triangle", "blue", "small", (40.0, 2.0, 46.0, 17.0, 34.0, 17.0), (0, 0, 200))
    scene = S.Scene(48, "grey", (128, 128, 128), (square, triangle))
    shape, colour, size = cell_labels(scene, 3, 3, 4)
    colours = sorted(S.COLOURS)
    want = torch.zeros(3, 3, dtype=torch.long)
    for r, c in ((1, 1), (0, 1), (1, 0), (1, 2), (2, 1)):
        want[r, c] = 1 + S.SHAPES.index("square")
    want[0, 2] = 1 + S.SHAPES.index("triangle")
    assert torch.equal(torch.from_numpy(shape), want)
    assert colour[1, 1] == 1 + colours.index("red") and colour[0, 2] == 1 + colours.index("blue")
    assert size[1, 1] == 1 + S.SIZES.index("large") and size[0, 2] == 1 + S.SIZES.index("small")
    assert shape[0, 0] == shape[2, 0] == shape[2, 2] == 0 and colour[2, 2] == size[2, 2] == 0
