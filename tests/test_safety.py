"""Issue 11: the attacks and accidents of a hostile or careless user, each reproduced as the issue tells it.

Serious: `--out` deleting folders it did not write, code run from planted pickles and torch files, shell injection
through params, distill writing outside --out, a stale decode sidecar surviving a failed decode.
Smaller: leftovers of killed runs, bad VQAv2 / TSV / params inputs, raw tracebacks, a model on another task's shards.
(The truncated-checkpoint fallback needs a trained run: tests/test_train.py.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from narvl import io as narvl_io
from narvl.cli import main as cli_main
from narvl.errors import NarvlError
from narvl.train import checkpoint as ck
from tests.fixtures.data import make
from tests.test_data_shards import raw  # noqa: F401 - module fixture: raw data in the real formats
from tests.test_decode_run import SPLIT, world  # noqa: F401 - module fixture: shards, tokenizer, tiny models

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def karpathy_args(raw_dir: Path, out) -> list[str]:
    return ["shard", "--params", str(ROOT / "params"), "--task", "caption", "--format", "karpathy",
            "--annotations", str(raw_dir / "captions/dataset_coco.json"), "--images", str(raw_dir / "images"),
            "--out", str(out)]


# ------------------------------------------------------------------------------------- 1. --out deletes folders
def test_shard_out_dot_deletes_nothing(raw, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`narvl shard ... --out .` deleted the current folder (a raw-data copy and a notes file)."""
    work = tmp_path / "work"
    shutil.copytree(raw, work / "raw2")
    (work / "notes.txt").write_text("my notes\n")
    before = tree(work)
    monkeypatch.chdir(work)
    assert cli_main(karpathy_args(Path("raw2"), ".")) == 2
    err = capsys.readouterr().err
    assert "the output contains the input" in err and "Choose an --out outside the inputs" in err
    assert tree(work) == before


def test_shard_out_holding_the_annotations_is_refused(raw, tmp_path, capsys):  # noqa: F811
    """`--annotations raw2/captions/dataset_coco.json --out raw2/captions` replaced the annotations with shards."""
    shutil.copytree(raw, tmp_path / "raw2")
    before = tree(tmp_path / "raw2")
    args = karpathy_args(tmp_path / "raw2", tmp_path / "raw2/captions")
    assert cli_main(args) == 2
    assert f"{tmp_path / 'raw2/captions'}: the output contains the input" in capsys.readouterr().err
    assert tree(tmp_path / "raw2") == before


def test_shard_replaces_only_its_own_output(raw, tmp_path, capsys):  # noqa: F811
    """A non-empty folder narvl did not write is refused, named, with what to do; its own earlier output (a rerun,
    as Snakemake does) and an empty folder are replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    assert cli_main(karpathy_args(raw, out)) == 2
    err = capsys.readouterr().err
    assert f"{out}: a non-empty folder that narvl did not write" in err and "choose another --out" in err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    (out / "thesis.tex").unlink()  # empty now: fine
    assert cli_main(karpathy_args(raw, out)) == 0
    first = tree(out)
    assert narvl_io.OUTPUT_MARKER in first and "sizes.json" in first
    assert cli_main(karpathy_args(raw, out)) == 0  # a rerun into its own output
    assert tree(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left beside it


def test_distill_out_above_its_shards_deletes_nothing(world, tmp_path, capsys):  # noqa: F811
    """`narvl distill --shards S/caption --out S` deleted S/caption, S/vqa, S/grounding and S/tokenizer.json."""
    s = tmp_path / "S"
    shutil.copytree(world["shards"], s)
    before = tree(s)
    assert cli_main(["distill", "--params", str(ROOT / "params"), "--model", str(world["models"]["caption", "ar"]),
                     "--shards", str(s / "caption"), "--tokenizer", str(s / "tokenizer.json"),
                     "--out", str(s)]) == 2
    assert f"{s}: the output contains the input" in capsys.readouterr().err
    assert tree(s) == before


# ------------------------------------------------------------------------------------------ 2. code execution
def test_score_grounding_refuses_a_refs_pickle_that_runs_code(tmp_path, capsys):
    """`narvl score grounding --refs evil.p` ran a planted os.system call."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps([{"split": "val", "ref_id": 1, "x": make.Planted(marker)}], protocol=2))
    (tmp_path / "instances.json").write_text(json.dumps({"annotations": []}))
    (tmp_path / "p.json").write_text("[]")
    assert cli_main(["score", "grounding", "--params", str(ROOT / "params"), "--refs", str(evil),
                     "--instances", str(tmp_path / "instances.json"), "--split", "val",
                     "--predictions", str(tmp_path / "p.json"), "--out", str(tmp_path / "m.json")]) == 2
    assert "evil.p: not a readable refs pickle" in capsys.readouterr().err
    assert not marker.exists()


def fake_run(run: Path, state_file: dict) -> Path:
    """A training run folder as `narvl train` leaves it: run.json, one complete checkpoint with the given files."""
    from narvl.model import build_model
    from narvl.params import PRESETS

    import dataclasses

    arch = dataclasses.replace(PRESETS["cpu"], d_model=32, heads=2, encoder_layers=2, decoder_layers=2, ffn_dim=64,
                               resnet_width=8)
    special = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "blank": 4}
    ident = {"kind": "nar", "task": "caption", "arch": dataclasses.asdict(arch), "vocab_size": 40,
             "num_queries": 6, "special_ids": special}
    ckpt = run / "checkpoints"
    tag = ckpt / ck.tag_for(4)
    (tag / "ranks").mkdir(parents=True)
    ck.write_run_info(ckpt, {"identity": ident, "identity_hash": ck.identity_hash(ident), "zero_stage": 0,
                             "world_size": 1, "tokenizer": {"path": "t.json", "sha256": "0"}})
    module = build_model("nar", arch, 40, 6, special).state_dict()
    for name, content in state_file.items():
        torch.save(content if content is not None else {"module": module}, tag / name)
    ck.mark_complete(tag, {"step": 4, "world_size": 1})
    return tag


def test_export_refuses_a_planted_deepspeed_file(tmp_path, capsys):
    """`narvl export --run R` ran code from a planted mp_rank_00_model_states.pt."""
    marker = tmp_path / "PWNED"
    fake_run(tmp_path / "R", {"mp_rank_00_model_states.pt": {"module": {}, "x": make.Planted(marker)}})
    assert cli_main(["export", "--run", str(tmp_path / "R"), "--out", str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert "mp_rank_00_model_states.pt: refused to load: it holds a posix.system object" in err
    assert not marker.exists() and not (tmp_path / "model.pt").exists()


def test_resume_refuses_a_planted_rank_file(tmp_path):
    """Resume loaded ranks/*.pt with weights_only=False: a planted one ran code."""
    marker = tmp_path / "PWNED"
    tag = fake_run(tmp_path / "R", {"mp_rank_00_model_states.pt": None,
                                    "ranks/rank_00000.pt": {"consumed": 1, "rng": make.Planted(marker)}})
    with pytest.raises(NarvlError, match=r"rank_00000\.pt: refused to load: it holds a posix\.system object"):
        ck.load_rank_state(tag, 0)
    assert not marker.exists()
    with pytest.raises(NarvlError, match=r"rank_00000\.pt: refused to load"):
        ck.latest_readable(tag.parent, ck.deepspeed_allow())  # what every rank checks before resuming
    assert not marker.exists()


def test_a_checkpoint_that_cannot_be_read_now_is_kept(tmp_path, monkeypatch):
    """Resume deletes a complete checkpoint whose files are truncated or corrupt; one that merely cannot be read at
    the moment (permissions, an I/O error) is an error that stops the run, and no reason to fall back and delete."""
    tag = fake_run(tmp_path / "R", {"mp_rank_00_model_states.pt": None, "ranks/rank_00000.pt": {"consumed": 1}})
    assert ck.latest_readable(tag.parent, ck.deepspeed_allow()) == ((4, tag), [])  # readable: nothing is broken
    real_load = torch.load

    def flaky(path, *args, **kwargs):
        if Path(path).name == "rank_00000.pt":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", flaky)
    with pytest.raises(NarvlError, match=r"rank_00000\.pt: cannot read it: Input/output error") as e:
        ck.latest_readable(tag.parent, ck.deepspeed_allow())
    assert not isinstance(e.value, narvl_io.UnreadableFile) and (tag / "ranks" / "rank_00000.pt").is_file()


def test_restricted_loads_cover_deepspeeds_own_torch_load(tmp_path):
    """DeepSpeed's loaders pass weights_only=False themselves: inside restricted_torch_loads they cannot run code,
    and outside it torch's own setting is back."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "x.pt"
    torch.save({"x": make.Planted(marker)}, path)
    with narvl_io.restricted_torch_loads(ck.deepspeed_allow()):
        with pytest.raises(pickle.UnpicklingError, match="unsupported GLOBAL posix.system"):
            torch.load(path, weights_only=False)
    assert not marker.exists() and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# --------------------------------------------------------------------------------------- 3. shell injection
def weird_params(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A params folder (at a path with a space, quotes and `;`) whose pipeline folders carry an injection attempt."""
    base = tmp_path / "we ird 'q\" ;dir"
    params = base / "params"
    shutil.copytree(ROOT / "params", params, ignore=shutil.ignore_patterns("real"))
    doc = yaml.safe_load((params / "pipeline.yaml").read_text())
    injected = tmp_path / "INJECTED"
    dirs = {"raw_dir": f"{base}/x/raw;touch {injected};echo", "shards_dir": f"{base}/sh ards;touch {injected}",
            "kd_shards_dir": f"{base}/kd", "runs_dir": f"{base}/runs", "results_dir": f"{base}/results",
            "logs_dir": f"{base}/lo'gs"}
    doc["pipeline"].update(dirs, tasks=["caption"])
    (params / "pipeline.yaml").write_text(yaml.safe_dump(doc))
    data = yaml.safe_load((params / "data.yaml").read_text())  # a tiny default dataset: a real run in seconds
    data["data"]["synth"].update(train_images=12, restval_images=2, val_images=4, test_images=4, ve_train_images=2,
                                 ve_dev_images=1, ve_test_images=1)
    (params / "data.yaml").write_text(yaml.safe_dump(data))
    return params, injected, dirs


def snakemake(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_params_paths_are_quoted_in_every_shell_command(tmp_path):
    """`raw_dir: "x/raw;touch x/INJECTED;echo"` ran the touch. The dry run prints every command quoted."""
    params, injected, dirs = weird_params(tmp_path)
    proc = snakemake("-n", "-p", "--forceall", "--nocolor", "--config", f"params_dir={params}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    commands = [line for line in text.splitlines() if "python -m narvl" in line]
    assert len(commands) > 10
    import shlex

    for line in commands:
        words = shlex.split(line.split("Shell command: ", 1)[-1])  # what the shell will see as arguments
        assert "touch" not in words, line
    assert f"--out {shlex.quote(dirs['raw_dir'])}" in text
    assert not injected.exists()


@pytest.mark.slow
def test_a_real_run_through_paths_with_spaces_quotes_and_semicolons(tmp_path):
    """synth -> shard of the caption task, for real, into the folders of the injection attempt: the paths work as
    paths and no file appears where the injected command would have put one."""
    params, injected, dirs = weird_params(tmp_path)
    target = f"{dirs['shards_dir']}/caption"
    proc = snakemake("-c1", "--nocolor", "--config", f"params_dir={params}", "--", target)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sizes = json.loads((Path(target) / "sizes.json").read_text())
    assert sizes["train"]["samples"] > 0 and (Path(dirs["raw_dir"]) / "captions/dataset_coco.json").is_file()
    assert (Path(dirs["logs_dir"]) / "data/synth.log").is_file()
    assert not injected.exists()


# ------------------------------------------------------------------------------- 4. distill outside --out
def test_distill_refuses_shard_names_that_leave_the_folder(world, tmp_path, capsys):  # noqa: F811
    """A val entry `../../src/f.txt` in sizes.json was hard-linked from outside the output folder (exit 0)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/f.txt").write_text("secret\n")
    shards = tmp_path / "a" / "caption"
    shutil.copytree(world["shards"] / "caption", shards)
    sizes = json.loads((shards / "sizes.json").read_text())
    sizes["val"]["shards"].append("../../src/f.txt")
    (shards / "sizes.json").write_text(json.dumps(sizes))
    out = tmp_path / "kd"
    assert cli_main(["distill", "--params", str(ROOT / "params"), "--model", str(world["models"]["caption", "ar"]),
                     "--shards", str(shards), "--tokenizer", str(world["tok_path"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sizes.json: split 'val': shard name '../../src/f.txt' is not <task>-val-NNNNNN.tar" in err
    assert not out.exists() and (tmp_path / "src/f.txt").stat().st_nlink == 1


# ------------------------------------------------------------------------------ 5. predictions and sidecar
def full_disk_at(monkeypatch, n: int) -> None:
    """The n-th file created from now on fails with ENOSPC, as on a full disk."""
    real, calls = tempfile.mkstemp, []

    def mkstemp(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("failing_write", [1, 2])
def test_a_failed_decode_never_leaves_predictions_beside_a_foreign_sidecar(world, tmp_path, monkeypatch, capsys,  # noqa: F811
                                                                           failing_write):
    """On a full disk the new predictions landed beside the old .meta.json and `narvl score` then recorded the old
    model file. Now: whichever write fails, score either refuses (naming the sidecar) or reads a sidecar that
    belongs to the predictions on disk."""
    from tests.test_decode_run import decode, score

    out = tmp_path / "caption-test-nar-greedy.json"
    assert decode(world, "caption", "nar", "greedy", out) == 0
    old_predictions = out.read_bytes()
    other = tmp_path / "other-model.pt"  # the same task, different weights: other predictions
    from narvl.model import load, save

    model, meta = load(world["models"]["caption", "nar"])
    torch.manual_seed(1)
    for p in model.parameters():
        p.data.normal_()
    save(other, model, meta)
    world = dict(world, models={**world["models"], ("caption", "nar"): other})
    with monkeypatch.context() as m:
        full_disk_at(m, failing_write)
        assert decode(world, "caption", "nar", "greedy", out) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err
    side = json.loads(out.with_name(out.stem + ".meta.json").read_text())
    code = score(world, "caption", out, tmp_path / "m.json")
    err = capsys.readouterr().err
    if side["predictions_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest():
        assert code == 0 and out.read_bytes() == old_predictions  # nothing replaced: still one unit
        assert json.loads((tmp_path / "m.json").read_text())["provenance"]["decode"]["model_file"] != str(other)
    else:
        assert code == 2 and "belongs to other predictions" in err and "Decode again" in err


# ------------------------------------------------------------------------------------------------- smaller
def test_leftovers_of_a_killed_shard_are_removed_by_the_next_run_and_only_those(raw, tmp_path):  # noqa: F811
    """After SIGKILL the `.<name>.XXXX.tmp` folders of `narvl shard` stayed forever."""
    jpg = make.b64(make.jpeg_bytes(1, (64, 48)))  # 5000 rows to decode: slow enough to be killed halfway
    tsv = make.ofa_tsv(tmp_path / "caption_train.tsv", [[str(i), "1", "a caption", "", jpg] for i in range(5000)])
    out = tmp_path / "shards" / "caption"
    proc = subprocess.Popen([sys.executable, "-m", "narvl", "shard", "--params", str(ROOT / "params"),
                             "--task", "caption", "--format", "ofa-tsv", "--tsv", f"train={tsv}", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".caption.") for p in out.parent.glob(".*")):
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, "the shard run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(".caption.")]
    assert len(leftovers) == 1 and leftovers[0].is_dir() and not out.exists()
    others = [out.parent / ".captions.123.abcdefgh.tmp", out.parent / ".caption.notes.tmp",
              out.parent / f".caption.{os.getpid()}.abcdefgh.tmp"]  # another output's, not ours, a live writer's
    for p in others:
        p.mkdir()
    assert cli_main(karpathy_args(raw, out)) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["caption", *(p.name for p in others)])


def test_vqav2_duplicate_question_id_is_an_error(raw, tmp_path):  # noqa: F811
    """A question_id given twice was written twice into the shard (exit 0)."""
    from narvl.tasks.vqa import read_vqav2

    q = json.loads((raw / "vqa/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    q["questions"].append(dict(q["questions"][0]))
    (tmp_path / "q.json").write_text(json.dumps(q))
    qid = q["questions"][0]["question_id"]
    with pytest.raises(NarvlError, match=rf"q\.json: questions\[2\] \(question_id {qid}\): question_id {qid} "
                                         r"given twice \(also .*q\.json questions\[0\]\)"):
        read_vqav2([tmp_path / "q.json"], [raw / "vqa/v2_mscoco_val2014_annotations.json"], raw / "images")


def test_vqav2_annotation_without_question_is_an_error(raw, tmp_path):  # noqa: F811
    """An annotation with no question was ignored silently."""
    from narvl.tasks.vqa import read_vqav2

    a = json.loads((raw / "vqa/v2_mscoco_val2014_annotations.json").read_text())
    a["annotations"].append(dict(a["annotations"][0], question_id=777))
    (tmp_path / "a.json").write_text(json.dumps(a))
    n = len(a["annotations"]) - 1
    with pytest.raises(NarvlError, match=rf"a\.json: 1 annotations have no question .*annotations\[{n}\] "
                                         r"\(question_id 777\)"):
        read_vqav2([raw / "vqa/v2_OpenEnded_mscoco_val2014_questions.json"], [tmp_path / "a.json"], raw / "images")


def test_empty_train_tsv_is_an_error(tmp_path, capsys):
    """An empty train TSV gave exit 0 with no train split and no warning."""
    jpg = make.b64(make.jpeg_bytes(1, (64, 48)))
    train = make.ofa_tsv(tmp_path / "caption_train.tsv", [])
    val = make.ofa_tsv(tmp_path / "caption_val.tsv", [["1", "1", "a caption", "", jpg]])
    assert cli_main(["shard", "--params", str(ROOT / "params"), "--task", "caption", "--format", "ofa-tsv",
                     "--tsv", f"train={train}", f"val={val}", "--out", str(tmp_path / "out")]) == 2
    assert f"{train}: no rows: the caption TSV file for split 'train' is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, message", [
    (("lr: 1.0e-3", "lr: .nan"), "train.lr: nan is not a finite number"),
    (("steps: {caption: 400,", "steps: {captoin: 5,"), "train.steps.captoin (key): 'captoin' is not one of "
                                                       "'caption', 'vqa', 'grounding', 'entailment' (did you mean "
                                                       "'caption'?)"),
    (("  seed: 0\n", "  seed: 0\n  seed: 1\n"), "duplicate key 'seed' (line 4; first given on line 3)"),
])
def test_bad_params_values_name_the_file_and_key(tmp_path, edit, message):
    """`lr: .nan` crashed both ranks later; `steps: {captoin: 5}` and a duplicate YAML key were accepted."""
    from narvl import params

    path = tmp_path / "train.yaml"
    text = (ROOT / "params/train.yaml").read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(NarvlError) as e:
        params.load(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_params_folder_for_a_file_and_file_for_a_folder(raw, tmp_path, capsys):  # noqa: F811
    """`--params` was a file for shard/decode/score (decode then read data.yaml beside it) and a folder for train:
    now it is the parameter folder everywhere. A file is refused by name before anything is read or written."""
    out = tmp_path / "out"
    shards, tok, model = str(tmp_path / "shards"), str(tmp_path / "t.json"), str(tmp_path / "m.pt")
    commands = {
        "data.yaml": [
            ["synth", "--out", str(out)],
            karpathy_args(raw, out)[:1] + karpathy_args(raw, out)[3:],
            ["tokenizer", "--shards", shards, "--out", str(out)],
            ["preview", "--shards", shards, "--split", "train", "--tokenizer", tok, "--out", str(out)],
            ["bench", "data", "--shards", shards, "--tokenizer", tok, "--out", str(out)],
        ],
        "decode.yaml": [
            ["decode", "--model", model, "--shards", shards, "--split", "test", "--tokenizer", tok,
             "--decoder", "greedy", "--out", str(out)],
            ["distill", "--model", model, "--shards", shards, "--tokenizer", tok, "--out", str(out)],
        ],
        "score.yaml": [
            ["score", "caption", "--references", str(tmp_path / "r.json"), "--predictions", str(tmp_path / "p.json"),
             "--out", str(out)],
            ["baselines", "caption-constant", "--split", "test", "--train-captions", str(tmp_path / "c.json"),
             "--references", str(tmp_path / "r.json"), "--predictions", str(tmp_path / "p.json"), "--out", str(out)],
        ],
    }
    for name, argvs in commands.items():
        file = ROOT / "params" / name
        for argv in argvs:
            cut = 2 if argv[0] in ("score", "baselines", "bench") else 1  # after the (sub)command's name
            assert cli_main([*argv[:cut], "--params", str(file), *argv[cut:]]) == 2, argv
            err = capsys.readouterr().err
            assert f"{file}: --params takes the parameter folder (e.g. {ROOT / 'params'}/), not a file" in err, \
                (argv, err)
            assert sorted(p.name for p in tmp_path.iterdir()) == [], argv  # nothing written
    # a folder without the stage file a command reads: the missing file is named
    empty = tmp_path / "params"
    empty.mkdir()
    assert cli_main(karpathy_args(raw, out)[:1] + ["--params", str(empty)] + karpathy_args(raw, out)[3:]) == 2
    assert f"{empty / 'data.yaml'}: no such parameter file" in capsys.readouterr().err
    assert cli_main(["score", "caption", "--params", str(empty), "--references", str(tmp_path / "r.json"),
                     "--predictions", str(tmp_path / "p.json"), "--out", str(out)]) == 2
    assert f"{empty / 'score.yaml'}: no such parameter file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params"]


def test_scorer_out_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "refs.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": [
        {"image_id": 1, "id": 1, "caption": "a cat"}]}))
    (tmp_path / "p.json").write_text(json.dumps([{"image_id": 1, "caption": "a cat"}]))
    (tmp_path / "metrics").mkdir()
    assert cli_main(["score", "caption", "--params", str(ROOT / "params"), "--references",
                     str(tmp_path / "refs.json"), "--predictions", str(tmp_path / "p.json"),
                     "--out", str(tmp_path / "metrics")]) == 2
    assert f"{tmp_path / 'metrics'}: is a folder, but this output is a file" in capsys.readouterr().err
    assert list((tmp_path / "metrics").iterdir()) == []


def test_full_disk_while_sharding_is_a_narvl_error(raw, tmp_path, monkeypatch, capsys):  # noqa: F811
    """ENOSPC while writing gave a raw traceback; now the output is named, nothing is left, nothing replaced."""
    from narvl.data import shard

    real, written = shard._SplitWriter.write, []

    def write(self, jpg, meta):
        if len(written) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(1)
        real(self, jpg, meta)

    monkeypatch.setattr(shard._SplitWriter, "write", write)
    out = tmp_path / "shards" / "caption"
    assert cli_main(karpathy_args(raw, out)) == 2
    assert f"{out}: no space left on the device while writing it" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_decode_with_a_model_of_another_task(world, tmp_path, capsys):  # noqa: F811
    """A caption model on VQA shards exited 0 with caption records."""
    out = tmp_path / "p.json"
    assert cli_main(["decode", "--params", str(ROOT / "params"), "--model",
                     str(world["models"]["caption", "nar"]), "--shards", str(world["shards"] / "vqa"), "--split",
                     SPLIT["vqa"], "--tokenizer", str(world["tok_path"]), "--decoder", "greedy",
                     "--out", str(out)]) == 2
    assert "is not a 'caption' shard but a vqa one" in capsys.readouterr().err
    assert not out.exists()
