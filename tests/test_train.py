"""`narvl train` / `narvl export` end to end on tiny shards (d=32, 2+2 layers, 2 CPU processes under DeepSpeed).

- the loss decreases; tensorboard, summary.json and ds_config.json hold what the run did
- kill -9 in the middle, re-run: it resumes from the last complete checkpoint (ignoring an incomplete one), says
  so, and ends with weights bit-identical to an uninterrupted run (weights, optimizer, schedule, RNG and data
  position restored)
- the exported file rebuilds the model on its own and gives identical outputs
- AR baseline with ZeRO-2, bf16 and gradient accumulation: export gathers the fp32 master weights
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from narvl.cli import main as cli_main
from narvl.io import file_sha256
from narvl.train import checkpoint as ck
from tests import train_inputs as T

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def narvl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "narvl", *args]


def train_args(tiny, out: Path, kind: str = "nar", params: Path | None = None) -> list[str]:
    return ["train", "--params", str(params or tiny["params"]), "--task", "caption", "--kind", kind,
            "--shards", str(tiny["shards"]), "--tokenizer", str(tiny["tokenizer"]), "--out", str(out)]


def export(run: Path, out: Path) -> None:
    """`narvl export` in this process (no process group needed; saves a Python start)."""
    assert cli_main(["export", "--run", str(run), "--out", str(out)]) == 0


def run_narvl(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(narvl_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"narvl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def module_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    return {"dir": d, "shards": T.make_shards(d / "shards"), "tokenizer": T.make_tokenizer(d / "tokenizer.json"),
            "params": T.make_params(ROOT / "params", d / "params", steps={"caption": 40, "vqa": 40,
                                                                             "grounding": 40})}


@pytest.fixture(scope="module")
def uninterrupted(tiny):
    out = tiny["dir"] / "caption-nar"
    proc = run_narvl(*train_args(tiny, out))
    return out, proc


def test_training_reduces_the_loss_and_logs_everything(tiny, uninterrupted):
    out, proc = uninterrupted
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["start_step"] == 0 and summary["world_size"] == 2
    assert summary["kind"] == "nar" and summary["samples_per_s"] > 0 and summary["wall_s"] > 0
    assert len(summary["params_hash"]) == 12 and summary["infeasible_total"] == 0
    assert summary["val"]["samples"] == 16 and 0.0 <= summary["val"]["exact_match"] <= 1.0

    tb = scalars(out / "tb")
    for tag in ("train/loss", "train/ctc", "train/smooth", "train/infeasible", "train/lr", "train/samples_per_s",
                "train/grad_norm", "val/loss", "val/exact_match", "val/infeasible"):
        assert tag in tb, f"{tag} missing from tensorboard ({sorted(tb)})"
    losses = [v for _, v in tb["train/loss"]]
    assert [s for s, _ in tb["train/loss"]] == list(range(2, 41, 2))
    assert losses[-1] < 0.5 * losses[0], losses
    assert tb["val/loss"][-1][0] == 40 and tb["val/loss"][-1][1] == pytest.approx(summary["val"]["loss"])
    # after s optimizer steps the LR is that of step s: warm-up (2 steps) then cosine from 3e-3 to 3e-4 at step 40
    expected = [3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 38))) for s in range(2, 41, 2)]
    assert [v for _, v in tb["train/lr"]] == pytest.approx(expected, rel=1e-6)

    ds = json.loads((out / "ds_config.json").read_text())
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["world_size"]) == (8, 4, 2)
    complete, incomplete = ck.checkpoints(out / "checkpoints")
    assert [s for s, _ in complete] == [36, 40] and not incomplete  # keep_checkpoints: 2
    assert all(ck.rank_file(p, r).is_file() for _, p in complete for r in (0, 1))
    assert "train caption-nar" in proc.stderr  # the progress bar


def test_kill_9_then_rerun_resumes_from_the_last_complete_checkpoint(tiny, uninterrupted):
    out = tiny["dir"] / "caption-nar-killed"
    proc = subprocess.Popen(narvl_cmd(*train_args(tiny, out)), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        marker = out / "checkpoints" / ck.tag_for(4) / ck.MARKER
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "no checkpoint appeared"
        os.kill(proc.pid, signal.SIGKILL)  # the command's own pid: torchrun, whose ranks must die with it
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while processes_mentioning(str(out)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not processes_mentioning(str(out)), "ranks outlived the killed command"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not (out / "summary.json").exists(), "the run finished before it was killed"
    last = ck.latest_complete(out / "checkpoints")
    assert last is not None and 4 <= last[0] < 40
    # a checkpoint cut short while saving: files but no marker
    broken = out / "checkpoints" / ck.tag_for(last[0] + 4)
    if broken.exists():
        shutil.rmtree(broken)
    shutil.copytree(last[1], broken)
    (broken / ck.MARKER).unlink()

    proc = run_narvl(*train_args(tiny, out))
    assert f"ignoring incomplete checkpoint {broken}" in proc.stderr
    assert f"resuming from checkpoint {last[1]} at step {last[0]} of 40" in proc.stderr
    assert "data position restored" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["start_step"] == last[0] and summary["resumed"] and summary["steps"] == 40
    # the same weights as the run that was never interrupted
    ref, _ = uninterrupted
    a, b = module_state(ref / "checkpoints" / ck.tag_for(40)), module_state(out / "checkpoints" / ck.tag_for(40))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_truncated_newest_checkpoint_is_named_and_the_previous_one_used(tiny, uninterrupted):
    """Issue 11: a truncated mp_rank_00_model_states.pt in the newest complete checkpoint gave a raw
    "PytorchStreamReader failed" traceback on each rank. Now export and resume name the file and use the previous
    complete checkpoint; the resumed run ends with the uninterrupted run's weights."""
    ref, _ = uninterrupted
    out = tiny["dir"] / "caption-nar-truncated"
    shutil.copytree(ref, out)
    (prev_step, prev), (last_step, last) = ck.checkpoints(out / "checkpoints")[0][-2:]
    cut = last / "mp_rank_00_model_states.pt"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    assert cli_main(["export", "--run", str(out), "--out", str(out / "model.pt")]) == 0
    assert torch.load(out / "model.pt", weights_only=True)["step"] == prev_step

    (out / "summary.json").unlink()
    proc = run_narvl(*train_args(tiny, out))
    assert f"ignoring checkpoint {last}: {cut}: truncated or corrupt torch file" in proc.stderr
    assert f"resuming from checkpoint {prev} at step {prev_step} of 40" in proc.stderr
    assert "Traceback" not in proc.stderr
    a, b = module_state(ref / "checkpoints" / ck.tag_for(40)), module_state(out / "checkpoints" / ck.tag_for(40))
    assert last_step == 40 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_round_trips_to_identical_outputs(tiny, uninterrupted):
    from narvl.data.loader import eval_loader
    from narvl.data.tokenizer import Tokenizer
    from narvl.model import build_model, load
    from narvl.params import load as load_params

    out, _ = uninterrupted
    export(out, out / "model.pt")
    model, meta = load(out / "model.pt")
    assert (meta["kind"], meta["task"], meta["step"], meta["num_queries"]) == ("nar", "caption", 40, 6)
    assert meta["tokenizer"]["sha256"] == file_sha256(tiny["tokenizer"])

    # independently: the model rebuilt from the params and the raw DeepSpeed weights
    tok = Tokenizer.load(tiny["tokenizer"])
    arch = load_params(tiny["params"] / "model.yaml").arch()
    special = {"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id, "unk": tok.unk_id, "blank": tok.blank_id}
    reference = build_model("nar", arch, tok.vocab_size, 6, special)
    reference.load_state_dict(module_state(out / "checkpoints" / ck.tag_for(40)))
    reference.eval()
    data = load_params(tiny["params"] / "data.yaml")
    batch = next(iter(eval_loader(tiny["shards"], "val", tok, data, "caption", 8, 0, 1)))
    with torch.no_grad():
        a = model(batch["images"], batch["src_tokens"], batch["src_mask"])
        b = reference(batch["images"], batch["src_tokens"], batch["src_mask"])
    assert a.shape == (8, 6, tok.vocab_size) and torch.equal(a, b)

    again = tiny["dir"] / "again.pt"
    export(out, again)
    sa, sb = torch.load(out / "model.pt")["state_dict"], torch.load(again)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "m.pt")]) == 2
    assert "no complete checkpoint to export" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ar_zero2_bf16(tiny):
    params = T.make_params(ROOT / "params", tiny["dir"] / "params-ar", steps={"caption": 16, "vqa": 16,
                                                                              "grounding": 16},
                           zero_stage=2, precision="bf16", checkpoint_every=8, log_every=4, micro_batch=2,
                           grad_accum=2)
    out = tiny["dir"] / "caption-ar"
    run_narvl(*train_args(tiny, out, kind="ar", params=params))
    export(out, out / "model.pt")
    return out


def test_ar_zero2_bf16_grad_accum_trains_and_exports_fp32_master_weights(ar_zero2_bf16):
    from narvl.model import ARModel, load

    out = ar_zero2_bf16
    tb = scalars(out / "tb")
    losses = [v for _, v in tb["train/loss"]]
    assert losses[-1] < losses[0], losses
    assert "train/grad_norm" in tb and "train/nll" in tb  # DeepSpeed's ZeRO optimizer reports the norm
    ds = json.loads((out / "ds_config.json").read_text())
    assert (ds["gradient_accumulation_steps"], ds["train_micro_batch_size_per_gpu"], ds["bf16"]["enabled"]) == (
        2, 2, True)
    tag = out / "checkpoints" / ck.tag_for(16)
    assert len(list(tag.glob("*_optim_states.pt"))) == 2  # ZeRO-2: one optimizer partition per rank
    model, meta = load(out / "model.pt")
    assert isinstance(model, ARModel) and meta["step"] == 16
    exported, module = model.state_dict(), module_state(tag)
    assert {v.dtype for v in module.values() if v.is_floating_point()} == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in exported.values() if v.is_floating_point())
    # the gathered fp32 masters round to the bf16 weights the engine trained with, and carry more precision
    assert all(torch.equal(exported[k].to(module[k].dtype), module[k]) for k in module)
    assert any(not torch.equal(exported[k], module[k].float()) for k in module if module[k].is_floating_point())


def test_distill_rewrites_train_targets_with_the_teacher_and_keeps_the_rest(tiny, ar_zero2_bf16):
    import tarfile

    from narvl.data.loader import eval_loader
    from narvl.data.tokenizer import Tokenizer
    from narvl.model import load
    from narvl.params import load as load_params
    from narvl.train.main import check_shards

    teacher = ar_zero2_bf16 / "model.pt"
    out = tiny["dir"] / "shards-kd"
    assert cli_main(["distill", "--params", str(tiny["params"]), "--model", str(teacher), "--shards",
                     str(tiny["shards"]), "--tokenizer", str(tiny["tokenizer"]), "--out", str(out)]) == 0
    src = tiny["shards"]
    assert json.loads((out / "sizes.json").read_text()) == json.loads((src / "sizes.json").read_text())
    for name in ("caption-val-000000.tar", "caption-test-000000.tar"):  # evaluation splits unchanged
        assert (out / name).read_bytes() == (src / name).read_bytes()
    check_shards(out, "caption", ["train", "val"])  # a NAR student can train on it

    def members(path):
        with tarfile.open(path) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar}

    new, old = {}, {}
    for name in json.loads((src / "sizes.json").read_text())["train"]["shards"]:
        new.update(members(out / name))
        old.update(members(src / name))
    assert new.keys() == old.keys() and len(new) == 2 * 64
    for name in old:
        if name.endswith(".jpg"):
            assert new[name] == old[name]
        else:
            a, b = json.loads(old[name]), json.loads(new[name])
            assert b["original_target"] == a["target"]
            assert {k: v for k, v in b.items() if k not in ("target", "original_target")} == {
                k: v for k, v in a.items() if k != "target"}

    # the teacher's beam search, run here independently on the first samples
    from narvl.params import ar_max_len

    model, _ = load(teacher)
    tok = Tokenizer.load(tiny["tokenizer"])
    decode = load_params(tiny["params"] / "decode.yaml")
    data = load_params(tiny["params"] / "data.yaml")
    batch = next(iter(eval_loader(src, "train", tok, data, "caption", 8, 0, 1)))
    hyps = model.generate(batch["images"], batch["src_tokens"], batch["src_mask"], max_len=ar_max_len(data, "caption"),
                          beam_size=decode.beam_size, length_penalty=decode.length_penalty)
    for meta, ids in zip(batch["meta"], hyps):
        assert json.loads(new[f"{meta['id']}.json"])["target"] == tok.decode(ids)
    info = json.loads((out / "distill.json").read_text())
    assert info["train_samples"] == 64 and info["distinct_inputs"] == 64 and info["beam_size"] == 3


@pytest.mark.slurm
def test_srun_tasks_train_as_ranks_like_torchrun(tiny, uninterrupted):
    """`srun -n 2 narvl train`: each task is a rank (Slurm variables mapped to torch.distributed's); the run ends
    with the same weights as the torchrun run. Needs Slurm (NARVL_SKIP_SLURM=1 skips, saying so)."""
    if os.environ.get("NARVL_SKIP_SLURM") == "1":
        pytest.skip("NARVL_SKIP_SLURM=1: the srun training test was not run")
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True) if shutil.which(
        "sinfo") else None
    if probe is None or probe.returncode != 0 or not probe.stdout.strip():
        pytest.fail("no running Slurm (start one with `sudo bash scripts/start_slurm.sh`, or set NARVL_SKIP_SLURM=1)",
                    pytrace=False)
    out = tiny["dir"] / "caption-nar-srun"
    cmd = ["srun", "-n", "2", "--cpus-per-task", "1", "--export", "ALL,OMP_NUM_THREADS=1",
           *narvl_cmd(*train_args(tiny, out))]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting 2 ranks under torchrun" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 40
    ref, _ = uninterrupted
    a, b = module_state(ref / "checkpoints" / ck.tag_for(40)), module_state(out / "checkpoints" / ck.tag_for(40))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_init_starts_a_nar_run_from_an_ar_model_file(tiny, ar_zero2_bf16):
    """train.init names the exported AR model: the NAR run starts from its encoder and decoder (one step at a
    vanishing learning rate leaves them in place); only the query vectors are new."""
    from narvl.model import load

    init = ar_zero2_bf16 / "model.pt"
    params = T.make_params(ROOT / "params", tiny["dir"] / "params-init", steps={"caption": 1, "vqa": 1,
                                                                                 "grounding": 1},
                           lr=1.0e-12, warmup_steps=0, init=str(init))
    out = tiny["dir"] / "caption-nar-init"
    proc = run_narvl(*train_args(tiny, out, kind="nar", params=params))
    assert "initial weights from" in proc.stderr
    from narvl.train.init import blank_from_eos

    start, _ = load(init)
    state, init_state = module_state(out / "checkpoints" / ck.tag_for(1)), start.state_dict()
    assert set(state) - set(init_state) == {"queries"}
    expected = blank_from_eos(init_state, start.special_ids)  # an AR file: the blank's row from <eos>'s
    for key, _ in start.named_parameters():  # (BatchNorm's running statistics move with the batch)
        assert torch.allclose(state[key].float(), expected[key].float(), atol=1e-6), key
    assert json.loads((out / "checkpoints" / "run.json").read_text())["identity"]["init"]["sha256"] == \
        file_sha256(init)


def test_pretrain_resnet_starts_every_training_s_resnet(tiny):
    """`narvl pretrain-resnet` (ImageNet in miniature) writes the same bytes twice; `narvl train --init-resnet` starts
    the encoder's ResNet from it (one step at a vanishing learning rate leaves the weights in place) and records the
    file in the run's identity; with train.freeze_resnet: all the ResNet stays exactly as loaded."""
    from narvl.train.init import resnet_state

    params = T.make_params(ROOT / "params", tiny["dir"] / "params-resnet", steps={"caption": 1, "vqa": 1,
                                                                                   "grounding": 1},
                           lr=1.0e-12, warmup_steps=0, freeze_resnet="none",
                           resnet_pretrain={"scenes": 64, "test_scenes": 16, "steps": 3, "batch": 8, "lr": 1.0e-3})
    files = [tiny["dir"] / f"resnet{i}" / "resnet.pt" for i in (1, 2)]
    for path in files:
        proc = run_narvl("pretrain-resnet", "--params", str(params), "--out", str(path))
        assert "held-out accuracy per object cell: shape" in proc.stdout
    assert files[0].read_bytes() == files[1].read_bytes()
    blob = torch.load(files[0], weights_only=True)
    assert blob["format"] == "narvl-resnet-v1" and blob["steps"] == 3
    assert set(blob["test_accuracy"]) == {"shape", "colour", "size", "background"}
    out = tiny["dir"] / "caption-ar-resnet"
    proc = run_narvl(*train_args(tiny, out, kind="ar", params=params), "--init-resnet", str(files[0]))
    assert "ResNet weights from" in proc.stderr
    state = module_state(out / "checkpoints" / ck.tag_for(1))
    for key, value in resnet_state(files[0]).items():
        if "running_" not in key and "num_batches" not in key:  # (BatchNorm statistics move with the batch)
            assert torch.allclose(state[f"encoder.embed_images.{key}"].float(), value, atol=1e-6), key
    identity = json.loads((out / "checkpoints" / "run.json").read_text())["identity"]
    assert identity["init_resnet"]["sha256"] == file_sha256(files[0])
    plain = json.loads((tiny["dir"] / "caption-nar" / "checkpoints" / "run.json").read_text()) \
        if (tiny["dir"] / "caption-nar" / "checkpoints" / "run.json").is_file() else None
    assert plain is None or "init_resnet" not in plain["identity"]  # runs without it keep their identity
    assert "freeze_resnet" not in identity

    # train.freeze_resnet: all (the default's): a real step trains the rest, and leaves every ResNet tensor, BatchNorm
    # statistics included, as the file has it; the setting joins the run identity
    frozen = T.make_params(ROOT / "params", tiny["dir"] / "params-frozen", steps={"caption": 1, "vqa": 1,
                                                                                   "grounding": 1},
                           warmup_steps=0, freeze_resnet="all")
    out = tiny["dir"] / "caption-ar-frozen"
    proc = run_narvl(*train_args(tiny, out, kind="ar", params=frozen), "--init-resnet", str(files[0]))
    assert "ResNet frozen (train.freeze_resnet: all)" in proc.stderr
    state, start = module_state(out / "checkpoints" / ck.tag_for(1)), resnet_state(files[0])
    for key, value in start.items():
        assert torch.equal(state[f"encoder.embed_images.{key}"], value), key
    assert not torch.equal(state["encoder.image_proj.weight"], module_state(
        tiny["dir"] / "caption-ar-resnet" / "checkpoints" / ck.tag_for(1))["encoder.image_proj.weight"])
    assert json.loads((out / "checkpoints" / "run.json").read_text())["identity"]["freeze_resnet"] == "all"
    # train.frozen_feature_cache_mb (the default's 1024): the frozen ResNet's features come from memory after an
    # image's first batch; 0 turns it off (the ResNet runs on every batch, and stays as loaded all the same)
    assert "frozen ResNet features cached per image, up to 1024 MiB" in proc.stderr
    uncached = T.make_params(ROOT / "params", tiny["dir"] / "params-uncached", steps={"caption": 1, "vqa": 1,
                                                                                       "grounding": 1},
                             warmup_steps=0, freeze_resnet="all", frozen_feature_cache_mb=0)
    out0 = tiny["dir"] / "caption-ar-uncached"
    proc = run_narvl(*train_args(tiny, out0, kind="ar", params=uncached), "--init-resnet", str(files[0]))
    assert "ResNet frozen (train.freeze_resnet: all)" in proc.stderr and "features cached" not in proc.stderr
    state0 = module_state(out0 / "checkpoints" / ck.tag_for(1))
    for key, value in start.items():
        assert torch.equal(state0[f"encoder.embed_images.{key}"], value), key


def test_multi_task_pretraining_starts_a_nar_fine_tune(tiny):
    """`narvl train --task pretrain` (OFA's pretraining in miniature) on the tasks' folders under --shards: an AR run
    with a validation per task in summary.json and tensorboard; its exported model starts a NAR run through --init
    (every weight but the new query vectors carried over), recorded in the run's identity."""
    root = tiny["dir"] / "shard-root"
    root.mkdir()
    (root / "caption").symlink_to(tiny["shards"])
    T.make_grounding_shards(root / "grounding")
    params = T.make_params(ROOT / "params", tiny["dir"] / "params-pretrain", steps={"caption": 1, "vqa": 1,
                                                                                     "grounding": 1},
                           lr=1.0e-12, warmup_steps=0,
                           pretrain={"steps": 6, "weights": {"caption": 1.0, "grounding": 1.0}, "region": 1.0})
    out = tiny["dir"] / "pretrain-ar"
    proc = run_narvl("train", "--params", str(params), "--task", "pretrain", "--kind", "ar", "--shards", str(root),
                     "--tokenizer", str(tiny["tokenizer"]), "--out", str(out))
    assert "train pretrain-ar" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "pretrain" and summary["kind"] == "ar" and summary["steps"] == 6
    # the region samples (grounded captioning) are a stream of their own, read from the grounding shards
    assert summary["tasks"] == {"caption": 1.0, "grounding": 1.0, "region": 1.0}
    tb = scalars(out / "tb")
    for name in summary["tasks"]:
        assert f"validation on val of {name} at step 6" in proc.stderr
        assert summary["val"][name]["split"] == "val" and summary["val"][name]["samples"] == 16
        assert f"val/{name}/loss" in tb
    export(out, out / "model.pt")

    fine = tiny["dir"] / "caption-nar-from-pretrain"
    proc = run_narvl(*train_args(tiny, fine, params=params), "--init", str(out / "model.pt"))
    assert "narvl ar model file (task pretrain, step 6)" in proc.stderr and "new: queries" in proc.stderr
    assert "the CTC blank's embedding row from <eos>'s" in proc.stderr
    from narvl import model as narvl_model

    source = narvl_model.load(out / "model.pt")[0]
    start = source.state_dict()
    ids = source.special_ids
    embed = start["encoder.embed_tokens.weight"].clone()
    assert not torch.equal(embed[ids["blank"]], embed[ids["eos"]])
    embed[ids["blank"]] = embed[ids["eos"]]  # the AR model never predicts the blank: a NAR start takes <eos>'s row
    start["encoder.embed_tokens.weight"] = embed
    state = module_state(fine / "checkpoints" / ck.tag_for(1))
    carried = {k: v for k, v in start.items() if "running_" not in k and "num_batches" not in k}
    assert set(state) - set(start) == {"queries"}
    for key, value in carried.items():
        assert torch.allclose(state[key].float(), value.float(), atol=1e-6), key
    assert json.loads((fine / "checkpoints" / "run.json").read_text())["identity"]["init"]["sha256"] == \
        file_sha256(out / "model.pt")
