"""narvl report --published / --check / --publish: a run compared with the published reference, and publishing."""

import csv
import io
import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from narvl.cli import main as cli_main
from narvl.report import readme, runlog
from tests.test_report import README_TEXT, make_bench, make_metrics

ROOT = Path(__file__).parents[1]


def score_params(tmp_path, quality=0.0, speedup=0.10):
    data = yaml.safe_load((ROOT / "params" / "score.yaml").read_text())
    data["score"]["reproduction"] = {"quality_tolerance": quality, "speedup_tolerance": speedup}
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def run_and_published(tmp_path):
    """A run (metrics cells, benchmark with pair speed-ups) and a published copy of exactly that run."""
    rng = random.Random(11)
    run = tmp_path / "results"
    make_metrics(run / "metrics", rng)
    make_bench(run / "bench" / "decode.json", rng, pairs=True)
    published = tmp_path / "published" / "default"
    published.mkdir(parents=True)
    shutil.copytree(run / "metrics", published / "metrics")
    shutil.copytree(run / "bench", published / "bench")
    return run, published


def compare(run, published, params, *extra):
    return cli_main(["report", "--metrics", *sorted(map(str, (run / "metrics").glob("*.json"))),
                     "--bench", str(run / "bench" / "decode.json"), "--published", str(published),
                     "--score-params", str(params), "--out", str(run), *extra])


def rows_of(run):
    return list(csv.DictReader(io.StringIO((run / "tables" / "reproduction.csv").read_text())))


def set_metric(path, name, value):
    cell = json.loads(path.read_text())
    cell["metrics"][name] = value
    path.write_text(json.dumps(cell))


def set_speedup(path, task, batch, method, factor):
    data = json.loads(path.read_text())
    for row in data["results"]:
        if row["task"] == task and row["batch"] == batch:
            for key in ("median", "q1", "q3"):
                row["speedup"][method][key] *= factor
    path.write_text(json.dumps(data))


def test_an_identical_run_reproduces_every_cell_exactly(run_and_published, tmp_path, capsys):
    run, published = run_and_published
    assert compare(run, published, score_params(tmp_path), "--check") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == "reproduced 30 of 30 quality cells exactly; speed-ups within 0% of published"
    rows = rows_of(run)
    quality = [r for r in rows if r["kind"] == "quality"]
    assert {r["verdict"] for r in quality} == {"exact"}
    # every metric value of every cell: caption cells have 8 (SPICE n/a included), VQA 4, grounding 1
    assert len(quality) == 6 * 8 + 6 * 4 + 18 * 1
    spice = next(r for r in quality if r["quantity"] == "SPICE")
    assert spice["published"] == spice["reproduced"] == "" and spice["verdict"] == "exact"
    speed = [r for r in rows if r["kind"] == "speed-up"]
    assert len(speed) == 3 * 3 * 2 and {r["model"] for r in speed} == {"nar"}  # tasks x batches x decoders
    md = (run / "tables" / "reproduction.md").read_text()
    assert md.splitlines()[2] == line and "| caption | test | nar-kd | beam | exact | 0 |" in md


def test_a_planted_difference_in_one_metric_is_caught_by_check(run_and_published, tmp_path, capsys):
    run, published = run_and_published
    cell = run / "metrics" / "vqa-val-nar-greedy.json"
    old = json.loads(cell.read_text())["metrics"]["accuracy_number"]
    set_metric(cell, "accuracy_number", old + 0.01)
    params = score_params(tmp_path)
    assert compare(run, published, params) == 0  # the comparison alone reports, never fails
    assert compare(run, published, params, "--check") == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "reproduced 29 of 30 quality cells exactly; 1 differ beyond 0; speed-ups within 0% of published"
    off = [r for r in rows_of(run) if r["kind"] == "quality" and r["verdict"] != "exact"]
    assert len(off) == 1
    (r,) = off
    assert (r["task"], r["split"], r["model"], r["decoder"], r["quantity"]) == ("vqa", "val", "nar", "greedy",
                                                                                 "accuracy_number")
    assert float(r["published"]) == old and float(r["reproduced"]) == old + 0.01 and r["verdict"] == "differs"
    assert float(r["difference"]) == pytest.approx(0.01)
    md = (run / "tables" / "reproduction.md").read_text()
    assert "| vqa-val-nar-greedy | accuracy_number |" in md and "| vqa | val | nar | greedy | differs |" in md


def test_a_tolerance_in_params_accepts_a_small_difference(run_and_published, tmp_path, capsys):
    run, published = run_and_published
    set_metric(run / "metrics" / "grounding-testA-ar-beam.json", "Acc@0.5", 50.0)
    set_metric(published / "metrics" / "grounding-testA-ar-beam.json", "Acc@0.5", 50.3)
    assert compare(run, published, score_params(tmp_path, quality=0.5), "--check") == 0
    assert "reproduced 29 of 30 quality cells exactly, 1 within 0.5;" in capsys.readouterr().out
    assert compare(run, published, score_params(tmp_path, quality=0.2), "--check") == 1


def test_a_missing_cell_fails_check_and_a_new_one_does_not(run_and_published, tmp_path, capsys):
    run, published = run_and_published
    (run / "metrics" / "caption-test-ar-beam.json").unlink()
    (published / "metrics" / "vqa-val-nar-kd-beam.json").unlink()
    assert compare(run, published, score_params(tmp_path), "--check") == 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("reproduced 28 of 29 quality cells exactly; 1 missing from the run;")
    verdicts = {(r["task"], r["model"], r["decoder"]): r["verdict"] for r in rows_of(run) if r["kind"] == "quality"}
    assert verdicts[("caption", "ar", "beam")] == "missing" and verdicts[("vqa", "nar-kd", "beam")] == "new"


def test_speedups_are_compared_as_ratios_and_never_fail_check(run_and_published, tmp_path, capsys):
    run, published = run_and_published
    bench = run / "bench" / "decode.json"
    set_speedup(bench, "caption", 1, "nar_greedy", 1.08)
    set_speedup(bench, "vqa", 32, "nar_beam", 0.75)
    assert compare(run, published, score_params(tmp_path), "--check") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == ("reproduced 30 of 30 quality cells exactly; speed-ups within 25% of published "
                    "(1 of 18 beyond the 10% tolerance)")
    speed = {(r["task"], r["decoder"], r["quantity"]): r for r in rows_of(run) if r["kind"] == "speed-up"}
    cap = speed[("caption", "greedy", "speedup_vs_ar@cpu,batch1")]
    assert float(cap["difference"]) == pytest.approx(0.08) and cap["verdict"] == "within"
    assert speed[("vqa", "beam", "speedup_vs_ar@cpu,batch32")]["verdict"] == "outside"


def test_check_without_a_published_folder_is_an_error_and_a_plain_run_says_so(run_and_published, tmp_path, capsys):
    run, _ = run_and_published
    absent = tmp_path / "published" / "none"
    assert compare(run, absent, score_params(tmp_path), "--check") == 2
    assert "no published metrics/ to check against" in capsys.readouterr().err
    assert compare(run, absent, score_params(tmp_path)) == 0
    assert "no published reference at" in (run / "tables" / "reproduction.md").read_text()
    assert cli_main(["report", "--metrics", str(run / "metrics"), "--bench", str(run / "bench" / "decode.json"),
                     "--check"]) == 2
    assert "--check needs --published" in capsys.readouterr().err


def test_publish_copies_the_run_and_the_readme_block_comes_from_the_published_copy(run_and_published, tmp_path,
                                                                                   capsys):
    run, _ = run_and_published
    for sub, name in (("tables", "main.md"), ("tables", "main.csv"), ("plots", "latency_batch.png")):
        (run / sub).mkdir(exist_ok=True)
        (run / sub / name).write_text(f"{name} of the run")
    (run / "tables" / "reproduction.md").write_text("not published")
    dest = tmp_path / "pub"
    readme_path = tmp_path / "README.md"
    readme_path.write_text(README_TEXT)
    metrics = sorted(map(str, (run / "metrics").glob("*.json")))
    args = ["report", "--publish", str(dest), "--metrics", *metrics, "--bench", str(run / "bench" / "decode.json"),
            "--out", str(run), "--readme", str(readme_path), "--command", "snakemake --cores all"]
    assert cli_main(args) == 0
    assert sorted(p.name for p in (dest / "metrics").iterdir()) == sorted(Path(m).name for m in metrics)
    assert (dest / "bench" / "decode.json").read_bytes() == (run / "bench" / "decode.json").read_bytes()
    assert sorted(p.name for p in (dest / "tables").iterdir()) == ["main.csv", "main.md"]
    assert (dest / "plots" / "latency_batch.png").read_text() == "latency_batch.png of the run"
    machine = json.loads((dest / "machine.json").read_text())
    assert machine["written_by"] == "narvl report --publish" and machine["commands"] == ["snakemake --cores all"]
    assert machine["machine"]["cpu_count"] >= 1 and machine["date"].endswith("UTC")

    text = readme_path.read_text()
    head, rest = text.split(readme.START)
    block, tail = rest.split(readme.END)
    assert head == "# narvl\n\nIntro stays.\n\n" and tail == "\n\nTail.\n"
    assert "from the published run in `pub`" in block and "### Visual grounding" in block
    assert "](pub/plots/latency_batch.png)" in block and "](pub/tables/main.md)" in block

    # the block is built from the published cells only: a later run leaves it alone, a published edit shows
    set_metric(run / "metrics" / "grounding-val-nar-greedy.json", "Acc@0.5", 12.3456)
    refresh = ["report", "--publish", str(dest), "--readme", str(readme_path)]
    assert cli_main(refresh) == 0 and readme_path.read_text() == text
    set_metric(dest / "metrics" / "grounding-val-nar-greedy.json", "Acc@0.5", 12.3456)
    assert cli_main(refresh) == 0 and "| NAR (NARVL) | greedy | 12.35 |" in readme_path.read_text()

    # publishing again replaces the earlier publication; a folder narvl did not publish is left alone
    assert cli_main(args) == 0 and json.loads((dest / "metrics" / "grounding-val-nar-greedy.json").read_text())[
        "metrics"]["Acc@0.5"] == 12.3456
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert cli_main(["report", "--publish", str(foreign), *args[3:]]) == 2
    assert "exists and was not written by `narvl report --publish`" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep"


SNAKEMAKE_LOG_TAIL = """\
Building DAG of jobs...
Provided cores: 2
Rules claiming more threads will be scaled down.
[Thu Dec  3 22:41:41 2026]
Finished jobid: 0 (Rule: all)
134 of 134 steps (100%) done
Complete log(s): /tmp/x/.snakemake/log/2026-12-03T222233.467767.snakemake.log
Elapsed time: 0:19:07.908796
"""


def test_publish_with_the_run_log_records_and_shows_how_long_the_run_took(run_and_published, tmp_path, capsys):
    """--run-log: Snakemake's own elapsed time, cores and jobs go into machine.json and the README block; a log of
    an unfinished or failed run, or of a run with nothing to do, is refused before anything is published."""
    run, _ = run_and_published
    dest, readme_path = tmp_path / "pub", tmp_path / "README.md"
    readme_path.write_text(README_TEXT)
    log = tmp_path / "2026-12-03T222233.467767.snakemake.log"
    log.write_text(SNAKEMAKE_LOG_TAIL)
    args = ["report", "--publish", str(dest), "--metrics", str(run / "metrics"), "--bench",
            str(run / "bench" / "decode.json"), "--readme", str(readme_path), "--run-log", str(log)]
    assert cli_main(args) == 0
    machine = json.loads((dest / "machine.json").read_text())
    assert machine["run"] == {"log": log.name, "elapsed_s": 1147.9, "jobs": 134, "cores": 2}
    assert "; the Snakemake run took 1,148 s (19.1 minutes) for 134 jobs on 2 cores." in readme_path.read_text()

    unfinished = tmp_path / "unfinished.log"
    unfinished.write_text(SNAKEMAKE_LOG_TAIL.split("Elapsed")[0])
    other = tmp_path / "pub2"
    assert cli_main([*args[:2], str(other), *args[3:-1], str(unfinished)]) == 2
    assert "unfinished.log: no 'N of N steps (100%) done' and 'Elapsed time' lines" in capsys.readouterr().err and not other.exists()
    idle = tmp_path / "idle.log"  # Snakemake 9 writes no elapsed time when it has nothing to do
    idle.write_text("Building DAG of jobs...\nNothing to be done (all requested files are present and up to date).\n")
    assert cli_main([*args[:2], str(other), *args[3:-1], str(idle)]) == 2
    assert "idle.log: Snakemake had nothing to do in this run" in capsys.readouterr().err and not other.exists()
    failed = tmp_path / "failed.log"  # a failed run has an elapsed time too
    failed.write_text("Provided cores: 2\nError in rule train:\n    jobid: 7\n3 of 10 steps (30%) done\n"
                      "Elapsed time: 0:05:01.5\n")
    assert cli_main([*args[:2], str(other), *args[3:-1], str(failed)]) == 2
    assert "failed.log: a job of this run failed" in capsys.readouterr().err and not other.exists()
    # one core, and a run of more than a day, as Snakemake writes them
    long = tmp_path / "long.log"
    long.write_text("Provided cores: 1 (use --cores to define parallelism)\n7 of 7 steps (100%) done\n"
                    "Elapsed time: 1 day, 2:03:04.5\n")
    assert runlog.run_info(long) == {"log": "long.log", "elapsed_s": 93784.5, "jobs": 7, "cores": 1}
    assert cli_main(["report", "--publish", str(dest), "--readme", str(readme_path), "--run-log", str(log)]) == 2
    assert "--run-log goes with --publish DIR --metrics --bench" in capsys.readouterr().err


def test_the_committed_published_folder_is_complete_and_consistent():
    """published/default holds what the README block and the reproduction rule read, and its tables match it."""
    pipeline = yaml.safe_load((ROOT / "params" / "pipeline.yaml").read_text())["pipeline"]
    published = ROOT / pipeline["published_dir"]
    distilled = yaml.safe_load((ROOT / "params" / "train.yaml").read_text())["train"]["distill_tasks"]
    cells = sorted(p.name for p in (published / "metrics").glob("*.json"))
    expected = sorted(f"{t}-{s}-{m}-{d}.json" for t in pipeline["tasks"] for s in pipeline["eval_splits"][t]
                      for m in ("ar", "nar", "nar-kd") if m != "nar-kd" or t in distilled
                      for d in pipeline["decoders"] + (pipeline["ar_decoders"].get(t, []) if m == "ar" else []))
    baselines = {"caption": ["baseline-constant-none"], "vqa": ["baseline-majority-none", "baseline-blind-greedy"],
                 "grounding": ["baseline-random-object-none", "baseline-largest-object-none"],
                 "entailment": ["baseline-blind-greedy"]}
    if pipeline["baselines"]:
        expected = sorted(expected + [f"{t}-{s}-{b}.json" for t in pipeline["tasks"] for s in pipeline["eval_splits"][t]
                                      for b in baselines[t]])
    assert cells == expected
    bench = json.loads((published / "bench" / "decode.json").read_text())
    assert all("speedup" in row and row["threads"] >= 1 for row in bench["results"])
    machine = json.loads((published / "machine.json").read_text())
    assert machine["written_by"] == "narvl report --publish" and machine["commands"]
    for name in ("main.md", "main.csv"):
        assert (published / "tables" / name).is_file()
    assert {p.name for p in (published / "plots").glob("*.png")} == {
        "training_curves.png", "latency_batch.png", "quality_speed.png", "gallery.png"}
    # the README's block is what `narvl report --publish` makes from this folder, byte for byte
    from narvl.report.main import readme_block

    text = (ROOT / pipeline["readme"]).read_text()
    assert readme.replace_block(text, readme_block(published, ROOT / pipeline["readme"])) == text
