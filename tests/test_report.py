"""narvl report on small synthetic metrics, bench, tensorboard, predictions and shard files."""

import csv
import io
import json
import random
import re
import statistics
import tarfile

import pytest
from PIL import Image, ImageDraw

from narvl.cli import main as cli_main
from narvl.errors import NarvlError
from narvl.report import readme, tables
from narvl.report.inputs import load_bench, load_metrics

SPLITS = {"caption": ["test"], "vqa": ["val"], "grounding": ["val", "testA", "testB"]}
CELLS = [(m, d) for m in ("ar", "nar", "nar-kd") for d in ("greedy", "beam")]


def metric_values(task, rng):
    if task == "caption":
        return {"Bleu_1": rng.random(), "Bleu_2": rng.random(), "Bleu_3": rng.random(), "Bleu_4": rng.random(),
                "METEOR": rng.random(), "ROUGE_L": rng.random(), "CIDEr": rng.uniform(0.5, 1.5), "SPICE": None}
    if task == "vqa":
        return {"accuracy": round(rng.uniform(40, 80), 2), "accuracy_yes/no": round(rng.uniform(60, 90), 2),
                "accuracy_number": round(rng.uniform(20, 50), 2), "accuracy_other": round(rng.uniform(30, 60), 2)}
    return {"Acc@0.5": rng.uniform(50, 95)}


def make_metrics(folder, rng, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for task, splits in SPLITS.items():
        for split in splits:
            for model, decoder in CELLS:
                if (task, model, decoder) in skip:
                    continue
                m = metric_values(task, rng)
                cell = {"task": task, "split": split, "model": model, "decoder": decoder, "metrics": m,
                        "unavailable": {"SPICE": "Stanford CoreNLP 3.6.0 is not installed"} if task == "caption"
                        else {},
                        "coverage": {"references": 10, "predicted": 10, "missing": 0, "missing_ids": []},
                        "provenance": {}}
                name = f"{task}-{split}-{model}-{decoder}.json"
                (folder / name).write_text(json.dumps(cell))
                written[(task, split, model, decoder)] = m
    return written


def make_bench(path, rng, mode="models", pairs=False):
    """`narvl bench decode` output (narvl/decode/bench.py): ms per batch per method, CPU rows; with `pairs` also the
    per-pair speed-ups (median and quartiles) and threads of the interleaved benchmark."""
    rows = []
    for task in SPLITS:
        for b in (1, 8, 32):
            ms = {"encoder": 3.0 * b ** 0.5}
            for method, base in (("nar_greedy", 8.0), ("nar_beam", 16.0), ("ar_greedy", 40.0), ("ar_beam", 80.0)):
                ms[method] = base * b ** 0.5 * rng.uniform(0.9, 1.1)
            row = {"device": "cpu", "task": task, "batch": b, "ms": ms, "ratios": {}}
            if pairs:
                row["threads"] = 2
                row["speedup"] = {}
                for decoder in ("greedy", "beam"):
                    median = ms[f"ar_{decoder}"] / ms[f"nar_{decoder}"] * rng.uniform(0.95, 1.05)
                    row["speedup"][f"nar_{decoder}"] = {"median": median, "q1": 0.9 * median, "q3": 1.1 * median,
                                                        "pairs": 80}
            rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mode": mode, "results": rows}))
    return rows


def make_runs(folder):
    from torch.utils.tensorboard import SummaryWriter

    for run in ("caption-ar", "caption-nar"):
        w = SummaryWriter(str(folder / run / "tb"))
        for step in range(0, 50, 5):
            w.add_scalar("train/loss", 5.0 / (1 + step / 10), step)
            w.add_scalar("train/lr", 1e-4, step)
        w.close()
        summary = {"task": "caption", "kind": run.split("-")[1], "steps": 50, "world_size": 2,
                   "final": {"loss": 0.123456, "lr": 1e-4}, "val": {"loss": 0.5, "exact_match": 0.25},
                   "samples_per_s": 31.25, "wall_s_total": 12.5}
        (folder / run / "summary.json").write_text(json.dumps(summary))


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards_and_predictions(shards, preds_dir):
    """Two eval samples per task with real JPEG images, and AR / NAR predictions for them."""
    preds_dir.mkdir(parents=True, exist_ok=True)
    for task, split in (("caption", "test"), ("vqa", "val"), ("grounding", "testA")):
        folder = shards / task
        folder.mkdir(parents=True)
        samples = []
        for i in range(2):
            img = Image.new("RGB", (96, 64), (40 + 80 * i, 120, 200))
            ImageDraw.Draw(img).rectangle([20, 10, 60, 50], fill=(250, 200, 0))
            buf = io.BytesIO()
            img.save(buf, format="JPEG")
            meta = {"id": f"{split}_{i:08d}", "task": task, "split": split, "image_id": 7 + i,
                    "orig_size": [192, 128], "size": [96, 64], "prompt": "what does the image describe?",
                    "target": "a yellow square on blue"}
            if task == "caption":
                meta["references"] = ["a yellow square on a blue background", "yellow box"]
            if task == "vqa":
                meta.update(question_id=100 + i, prompt="what color is the square?", target="yellow",
                            answers=["yellow"] * 10, answer_type="other", scores={"yellow": 1.0})
            if task == "grounding":
                meta.update(ref_id=1 + i, sent_id=10 + i, prompt='which region does the text " yellow square " '
                            "describe?", box=[20, 10, 60, 50], orig_box=[40, 20, 120, 100])
            samples.append((meta, buf.getvalue()))
        name = f"{task}-{split}-000000.tar"
        with tarfile.open(folder / name, "w") as tar:
            for meta, jpg in samples:
                _add(tar, f"{meta['id']}.jpg", jpg)
                _add(tar, f"{meta['id']}.json", json.dumps(meta).encode())
        (folder / "sizes.json").write_text(json.dumps({split: {"shards": [name], "samples": 2, "skipped": 0,
                                                               "skipped_ids": []}}))
        for model in ("ar", "nar"):
            if task == "caption":
                recs = [{"image_id": m["image_id"], "caption": f"{model} says a square"} for m, _ in samples]
            elif task == "vqa":
                recs = [{"question_id": m["question_id"], "answer": "yellow" if model == "ar" else "blue"}
                        for m, _ in samples]
            else:
                shift = 0 if model == "ar" else 30
                recs = [{"ref_id": m["ref_id"], "sent_id": m["sent_id"], "sample_id": m["id"],
                         "box": [40 + shift, 20, 120 + shift, 100]} for m, _ in samples]
            (preds_dir / f"{task}-{split}-{model}-greedy.json").write_text(json.dumps(recs))


README_TEXT = ("# narvl\n\nIntro stays.\n\n<!-- narvl:results:start -->\nold numbers 1.23\n<!-- narvl:results:end -->\n"
               "\nTail.\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Inputs written and the report run once for the module (plots take a few seconds)."""
    tmp_path = tmp_path_factory.mktemp("report")
    rng = random.Random(3)
    ws = {"metrics": tmp_path / "results" / "metrics", "bench": tmp_path / "results" / "bench" / "decode.json",
          "runs": tmp_path / "runs", "predictions": tmp_path / "results" / "predictions",
          "shards": tmp_path / "data" / "shards", "out": tmp_path / "results", "readme": tmp_path / "README.md"}
    ws["values"] = make_metrics(ws["metrics"], rng)
    ws["bench_records"] = make_bench(ws["bench"], rng)
    make_runs(ws["runs"])
    make_shards_and_predictions(ws["shards"], ws["predictions"])
    ws["readme"].write_text(README_TEXT)
    assert run_report(ws) == 0
    return ws


def run_report(ws):
    return cli_main(["report"] + [a for k in ("metrics", "bench", "runs", "predictions", "shards", "out")
                                  for a in (f"--{k}", str(ws[k]))])


def test_report_tables_hold_exactly_the_input_numbers(workspace):
    ws = workspace
    rows = list(csv.DictReader(io.StringIO((ws["out"] / "tables" / "main.csv").read_text())))
    got = {(r["task"], r["split"], r["model"], r["decoder"], r["quantity"]): r["value"] for r in rows}
    shown = {"caption": ["Bleu_4", "METEOR", "CIDEr", "SPICE"],
             "vqa": ["accuracy", "accuracy_yes/no", "accuracy_number", "accuracy_other"], "grounding": ["Acc@0.5"]}
    expected_md = set()
    for (task, split, model, decoder), metrics in ws["values"].items():
        for q in shown[task]:
            v = metrics[q]
            assert got[(task, split, model, decoder, q)] == ("" if v is None else repr(v))
            if v is not None:
                expected_md.add(f"{100 * v:.1f}" if task == "caption" else f"{v:.2f}")
    lat = {}
    for row in ws["bench_records"]:
        if row["batch"] == 1:
            for method, ms in row["ms"].items():
                if method != "encoder":
                    model, decoder = method.split("_")
                    lat[(row["task"], model, decoder)] = ms
                    if model == "nar":
                        lat[(row["task"], "nar-kd", decoder)] = ms
    for (task, model, decoder), ms in lat.items():
        assert float(got[(task, "", model, decoder, "ms_per_sample@cpu,batch1")]) == ms
        speedup = lat[(task, "ar", decoder)] / ms
        assert float(got[(task, "", model, decoder, "speedup_vs_ar@cpu,batch1")]) == speedup
        expected_md.add(f"{ms:.2f}")
        expected_md.add(f"{speedup:.2f}×")
    md = (ws["out"] / "tables" / "main.md").read_text().split("## Training runs")[0]
    table_cells = set()
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| model") and "---" not in line:
            table_cells.update(c.strip() for c in line.strip("|").split("|")[2:])
    assert table_cells - {"n/a"} == expected_md
    assert "n/a SPICE: Stanford CoreNLP 3.6.0 is not installed" in md
    assert "| NAR + KD | beam |" in md and "ms/sample (cpu, batch 1)" in md


def test_header_names_the_metrics_folder(workspace):
    """Not the list of files (issue 10, item 5): the folder they came from."""
    ws = workspace
    files = sorted(map(str, ws["metrics"].glob("*.json")))  # as the workflow passes them
    out = ws["out"].parent / "from-files"
    assert cli_main(["report", "--metrics", *files, "--bench", str(ws["bench"]), "--runs", str(ws["runs"]),
                     "--predictions", str(ws["predictions"]), "--shards", str(ws["shards"]), "--out", str(out)]) == 0
    header = (out / "tables" / "main.md").read_text().splitlines()[2]
    assert header == (f"Generated by `narvl report` from {len(files)} metrics files in `{ws['metrics'].as_posix()}` "
                      f"and `{ws['bench'].as_posix()}`; do not edit by hand.")


def test_speedups_are_the_benchmark_pair_medians_with_their_spread(tmp_path):
    rng = random.Random(5)
    make_metrics(tmp_path / "m", rng)
    rows = make_bench(tmp_path / "b.json", rng, pairs=True)
    bench, info = load_bench(tmp_path / "b.json")
    built = {t.task: t for t in tables.build(load_metrics(tmp_path / "m"), bench, info["mode"])}
    vqa1 = next(r for r in rows if r["task"] == "vqa" and r["batch"] == 1)
    up = vqa1["speedup"]["nar_beam"]
    md = tables.to_markdown([built["vqa"]])
    nar_beam = next(line for line in md.splitlines() if line.startswith("| NAR (NARVL) | beam"))
    assert nar_beam.endswith(f"| {up['median']:.2f}× ({up['q1']:.2f}–{up['q3']:.2f}) |")
    kd_beam = next(line for line in md.splitlines() if line.startswith("| NAR + KD | beam"))
    assert kd_beam.endswith(f"| {up['median']:.2f}× ({up['q1']:.2f}–{up['q3']:.2f}) |")  # reuses the NAR timing
    assert "2 CPU threads" in md and "median of the per-pair ratios" in md
    value = next(v for v in built["vqa"].values if v["quantity"] == "speedup_vs_ar@cpu,batch1"
                 and v["model"] == "nar" and v["decoder"] == "beam")
    assert value["value"] == up["median"]


def test_plots_are_written(workspace):
    ws = workspace
    for name in ("training_curves", "latency_batch", "quality_speed", "gallery"):
        path = ws["out"] / "plots" / f"{name}.png"
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200


@pytest.mark.parametrize("text", ["# no markers\n", f"{readme.START}\nx\n", f"{readme.END}\n{readme.START}\n",
                                  f"{readme.START}\n{readme.START}\n{readme.END}\n"])
def test_readme_markers_missing_or_misordered_is_an_error(text):
    with pytest.raises(NarvlError, match="marker|comes before"):
        readme.replace_block(text, "new")


def test_missing_cells_dash_and_missing_predictions_are_flagged(tmp_path):
    rng = random.Random(1)
    make_metrics(tmp_path / "m", rng, skip={("vqa", "nar-kd", "greedy"), ("vqa", "nar-kd", "beam")})
    cell = json.loads((tmp_path / "m" / "vqa-val-nar-greedy.json").read_text())
    cell["coverage"].update(missing=3, missing_ids=[1, 2, 3])
    (tmp_path / "m" / "vqa-val-nar-greedy.json").write_text(json.dumps(cell))
    make_bench(tmp_path / "b.json", rng)
    bench, info = load_bench(tmp_path / "b.json")
    bench = [r for r in bench if not (r["task"] == "vqa" and r["model"] == "nar-kd")]
    built = {t.task: t for t in tables.build(load_metrics(tmp_path / "m"), bench, info["mode"])}
    md = tables.to_markdown([built["vqa"]])
    assert "| NAR + KD |" not in md
    nar_row = next(line for line in md.splitlines() if line.startswith("| NAR (NARVL) | greedy"))
    assert re.search(r"\d\.\d\d†", nar_row)
    assert "3 of 10 items had no prediction" in md


def test_unnamed_or_duplicate_cells_are_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"task": "vqa", "split": None, "model": "ar", "decoder": "greedy",
                                                 "metrics": {}}))
    with pytest.raises(NarvlError, match="not fully named"):
        load_metrics(tmp_path)


def test_training_table_from_summaries(workspace):
    md = (workspace["out"] / "tables" / "main.md").read_text()
    assert "| caption-ar | 50 | 0.1235 | 0.5000 | 0.250 | 31.2 | 2 | 12 |" in md
    rows = list(csv.DictReader(io.StringIO((workspace["out"] / "tables" / "main.csv").read_text())))
    got = {(r["model"], r["quantity"]): r["value"] for r in rows if r["quantity"].startswith("train:")}
    assert got[("caption-nar", "train:final.loss")] == "0.123456" and got[("caption-nar", "train:steps")] == "50"


def test_training_table_lists_a_multi_task_run_s_validation_per_stream():
    """`narvl train --task pretrain` validates each stream (summary.json: val by task, and the mix under `tasks`): its
    row has no single val figure ("–"), and a line under the table gives each stream's, also in the tidy values."""
    from narvl.report.tables import training_table

    pretrain = {"task": "pretrain", "steps": 24, "final": {"loss": 1.5}, "world_size": 2, "wall_s_total": 60.0,
                "tasks": {"caption": 1.0, "region": 0.5},
                "val": {"caption": {"loss": 0.9, "exact_match": 0.0, "split": "val"},
                        "region": {"loss": 0.55, "exact_match": 0.566, "split": "val"}}}
    single = {"task": "vqa", "steps": 3, "final": {"loss": 0.5}, "val": {"loss": 0.4, "exact_match": 0.5}}
    md, values = training_table({"pretrain-ar": pretrain, "vqa-ar": single})
    assert "| pretrain-ar | 24 | 1.5000 | – | – | – | 2 | 60 |" in md
    assert ("pretrain-ar validates each of its streams (val loss / exact match): caption 0.9000 / 0.000; region "
            "0.5500 / 0.566.") in md
    got = {(v["model"], v["quantity"]): v["value"] for v in values}
    assert got[("pretrain-ar", "train:val.region.exact_match")] == 0.566 and got[("vqa-ar", "train:val.loss")] == 0.4
    assert not any(q.startswith("train:val.") and m == "vqa-ar" and q != "train:val.loss"
                   and q != "train:val.exact_match" for m, q in got)


def test_explicit_metrics_files_leave_other_cells_out(tmp_path):
    """The workflow passes the cells it built: a leftover file in the same folder must not enter the tables."""
    make_metrics(tmp_path / "m", random.Random(2))
    every = load_metrics(tmp_path / "m")
    chosen = sorted((tmp_path / "m").glob("caption-*.json"))
    cells = load_metrics(chosen)
    assert {c.path for c in cells} == set(chosen) and len(cells) < len(every)
    assert {c.task for c in cells} == {"caption"}
    with pytest.raises(NarvlError, match="no such metrics folder or file"):
        load_metrics(tmp_path / "absent")


def test_constrained_ar_rows_show_nar_greedy_speedup_over_them(tmp_path):
    """An AR row decoded with OFA's trie (VQA) carries its own metrics cell and, as speed-up, the benchmark's
    NAR-greedy pairs against it, labelled so a reader knows which AR it is."""
    rng = random.Random(7)
    make_metrics(tmp_path / "m", rng)
    cell = {"task": "vqa", "split": "val", "model": "ar", "decoder": "trie", "metrics": metric_values("vqa", rng),
            "unavailable": {}, "coverage": {"references": 10, "predicted": 10, "missing": 0, "missing_ids": []},
            "provenance": {}}
    (tmp_path / "m" / "vqa-val-ar-trie.json").write_text(json.dumps(cell))
    rows = make_bench(tmp_path / "b.json", rng, pairs=True)
    for row in rows:
        if row["task"] == "vqa":
            row["ms"]["ar_trie"] = 5 * row["ms"]["nar_greedy"]
            row["speedup"]["ar_trie"] = {"median": 4.8, "q1": 4.5, "q3": 5.1, "pairs": 80}
    (tmp_path / "b.json").write_text(json.dumps({"mode": "models", "results": rows}))
    bench, info = load_bench(tmp_path / "b.json")
    built = {t.task: t for t in tables.build(load_metrics(tmp_path / "m"), bench, info["mode"])}
    md = tables.to_markdown([built["vqa"]])
    trie = next(line for line in md.splitlines() if line.startswith("| AR (OFA) | trie over answers"))
    assert f"| {cell['metrics']['accuracy']:.2f} |" in trie and trie.endswith("| 4.80× (4.50–5.10) |")
    assert "show NAR greedy's speed-up over that AR decoding" in md
    assert "trie" not in tables.to_markdown([built["caption"]])  # no such row where nothing was decoded so


def test_seeds_are_shown_as_mean_and_sd(tmp_path):
    """pipeline.seeds: the cells ar, ar-seed1, ar-seed2 of one (task, split, decoder) make one row, mean ± sample
    sd; the CSV keeps the mean and the sd; a model without other seeds keeps its plain value."""
    rng = random.Random(3)
    make_metrics(tmp_path / "m", rng)
    base = json.loads((tmp_path / "m" / "vqa-val-ar-greedy.json").read_text())
    accs = [base["metrics"]["accuracy"], 50.0, 60.0]
    for seed, acc in ((1, accs[1]), (2, accs[2])):
        cell = {**base, "model": f"ar-seed{seed}", "metrics": {**base["metrics"], "accuracy": acc}}
        (tmp_path / "m" / f"vqa-val-ar-seed{seed}-greedy.json").write_text(json.dumps(cell))
    built = {t.task: t for t in tables.build(load_metrics(tmp_path / "m"), [], None)}
    md = tables.to_markdown([built["vqa"]])
    row = next(line for line in md.splitlines() if line.startswith("| AR (OFA) | greedy"))
    mean, sd = statistics.fmean(accs), statistics.stdev(accs)
    assert f"| {mean:.2f} ± {sd:.2f} |" in row and "mean ± sd over the seeds" in md
    nar = next(line for line in md.splitlines() if line.startswith("| NAR (NARVL) | greedy"))
    assert "±" not in nar
    got = {v["quantity"]: v["value"] for v in built["vqa"].values
           if v["model"] == "ar" and v["decoder"] == "greedy" and v["quantity"].startswith("accuracy")}
    assert got["accuracy"] == pytest.approx(mean) and got["accuracy_sd"] == pytest.approx(sd)
    assert not any("seed" in line for line in md.splitlines() if line.startswith("|"))  # no per-seed rows
