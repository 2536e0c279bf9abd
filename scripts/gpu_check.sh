#!/usr/bin/env bash
# One GPU check in a few minutes, written as one JSON file (docs/model.md, "GPU check"):
#
#   bash scripts/gpu_check.sh [OUT_DIR]              # on a machine with an NVIDIA GPU (default OUT_DIR: gpu_check)
#   bash scripts/gpu_check.sh --cpu-smoke [OUT_DIR]  # the same steps, tiny and on the CPU (tests/test_gpu_check.py)
#
#   1. the tests that use CUDA (`pytest -m cuda`: tests/test_cuda.py), junit XML and log;
#   2. `narvl bench decode --preset base --device cuda` at batch 1, 32 and 128, in fp32 and in bf16, at the paper's
#      image sizes (params/real: 480 px, grounding 512) (smoke: preset cpu, the default's 96 px, VQA only, batch 1
#      and 2, one thread);
#   3. 50 steps of bf16 DeepSpeed training (one process, nccl) of the NAR caption model on the embedded default
#      (smoke: 4 fp32 steps on the CPU, gloo, on a tiny default dataset), with its summary.json.
#
# OUT_DIR/gpu_check.json gathers the GPU's name, torch/CUDA versions, the pytest outcome, both benchmarks and the
# training summary; the raw outputs lie beside it. The script works in a scratch folder (OUT_DIR/work) and touches
# nothing else of the checkout. Run it from a checkout with `bash install.sh` done (it uses .venv/).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-gpu_check}
PY=${NARVL_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "gpu_check.sh: $PY not found: run 'bash install.sh' first (or set NARVL_PYTHON)" >&2; exit 1; }
if [ "$SMOKE" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: torch sees no GPU (torch.cuda.is_available() is False); use --cpu-smoke to test the script" >&2
    exit 1
fi
mkdir -p "$OUT"
if [ -e "$OUT/work" ] && [ ! -f "$OUT/work/.gpu-check" ]; then
    echo "gpu_check.sh: $OUT/work exists and was not made by this script; choose another OUT_DIR" >&2
    exit 1
fi
rm -rf "$OUT/work"   # made by an earlier run of this script (it has our marker)
mkdir -p "$OUT/work" && touch "$OUT/work/.gpu-check"
WORK=$OUT/work
export PYTHONUNBUFFERED=1
start=$(date +%s)
step() { printf '\n[gpu_check] %s (%d s)\n' "$*" "$(( $(date +%s) - start ))"; }

# Parameters: a copy of params/ with the check's values (the committed files stay as they are).
step "parameters"
"$PY" - "$WORK" "$SMOKE" <<'EOF'
import shutil, sys
from pathlib import Path
import yaml

work, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
params = work / "params"
shutil.copytree("params", params, ignore=shutil.ignore_patterns("real"))

def edit(stage, fn):
    path = params / f"{stage}.yaml"
    doc = yaml.safe_load(path.read_text())
    fn(doc[stage])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))

edit("decode", lambda d: d.update(bench_batch_sizes=[1, 2] if smoke else [1, 32, 128], bench_repeats=1 if smoke else 5))
# the GPU's benchmark times OFA-base at the paper's image sizes (params/real: 480 px, grounding 512), as
# docs/bench/preset-base-cpu-480px.json does on the CPU; the smoke times the default's 96 px
real = work / "params-real"
shutil.copytree("params/real", real)
doc = yaml.safe_load((real / "decode.yaml").read_text())
doc["decode"].update(bench_batch_sizes=[1, 32, 128], bench_repeats=5)
(real / "decode.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
edit("train", lambda t: t.update(steps={"caption": 4 if smoke else 50, "vqa": 4, "grounding": 4}, nproc=1,
                                 global_batch=16, micro_batch=16, grad_accum=1,
                                 precision="fp32" if smoke else "bf16", checkpoint_every=1000, log_every=2,
                                 val_batches=1))
edit("pipeline", lambda p: p.update(tasks=["caption"], raw_dir=str(work / "raw"), shards_dir=str(work / "shards"),
                                    kd_shards_dir=str(work / "shards-kd"), runs_dir=str(work / "runs"),
                                    results_dir=str(work / "results"), logs_dir=str(work / "logs")))
if smoke:
    edit("data", lambda d: d["synth"].update(train_images=24, restval_images=2, val_images=4, test_images=4,
                                             ve_train_images=2, ve_dev_images=1, ve_test_images=1))
EOF

step "1. tests that use CUDA (pytest -m cuda)"
set +e
"$PY" -m pytest -m cuda -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" tests/test_cuda.py \
    >"$OUT/pytest_cuda.log" 2>&1
pytest_rc=$?
set -e
tail -1 "$OUT/pytest_cuda.log"

step "2. narvl bench decode, fp32 and bf16"
preset=base; device=cuda; tasks=(caption vqa grounding); threads=0; bench_params=$WORK/params-real
if [ "$SMOKE" = 1 ]; then preset=cpu; device=cpu; tasks=(vqa); threads=1; bench_params=$WORK/params; fi
for dtype in fp32 bf16; do
    "$PY" -m narvl bench decode --params "$bench_params" --preset "$preset" --device "$device" --dtype "$dtype" \
        --threads "$threads" --tasks "${tasks[@]}" --out "$OUT/bench_${preset}_${dtype}.json" >"$OUT/bench_${dtype}.log" 2>&1
    grep -E '^(cuda|cpu) ' "$OUT/bench_${dtype}.log" || true
done

step "3. training: the embedded default's data, then $( [ "$SMOKE" = 1 ] && echo 4 || echo 50 ) steps"
# the commands of the DAG's rules synth, shard_karpathy and tokenizer, run directly: a GPU machine may have the
# packages that training needs but not Snakemake (docs/model.md, "GPU check")
{
    "$PY" -m narvl synth --params "$WORK/params" --out "$WORK/raw"
    "$PY" -m narvl shard --params "$WORK/params" --task caption --format karpathy \
        --annotations "$WORK/raw/captions/dataset_coco.json" --images "$WORK/raw/images" --out "$WORK/shards/caption"
    "$PY" -m narvl tokenizer --params "$WORK/params" --shards "$WORK/shards/caption" --out "$WORK/shards/tokenizer.json"
} >"$OUT/data.log" 2>&1
"$PY" -m narvl train --params "$WORK/params" --task caption --kind nar --shards "$WORK/shards/caption" \
    --tokenizer "$WORK/shards/tokenizer.json" --out "$WORK/runs/caption-nar" >"$OUT/train.log" 2>&1
cp "$WORK/runs/caption-nar/summary.json" "$OUT/train_summary.json"

step "gathering $OUT/gpu_check.json"
"$PY" - "$OUT" "$preset" "$pytest_rc" "$SMOKE" "$(( $(date +%s) - start ))" <<'EOF'
import json, platform, sys
import xml.etree.ElementTree as ET
from pathlib import Path
import torch

out, preset, rc, smoke, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
suite = ET.parse(out / "pytest_cuda.xml").getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
tests = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
bench = {}
for dtype in ("fp32", "bf16"):
    doc = json.loads((out / f"bench_{preset}_{dtype}.json").read_text())
    bench[dtype] = [{k: r[k] for k in ("device", "task", "batch", "ms", "speedup", "ratios", "samples_per_s",
                                       "encoder_variants", "nar_parts", "image_size")} for r in doc["results"]]
result = {
    "mode": "cpu-smoke" if smoke else "gpu",
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "torch": torch.__version__, "cuda": torch.version.cuda, "host": platform.node(),
    "pytest_cuda": {"exit_code": rc, **tests},
    "bench_decode": {"preset": preset, **bench},
    "train": json.loads((out / "train_summary.json").read_text()),
    "seconds": seconds,
}
tmp = out / ".gpu_check.json.tmp"
tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
tmp.replace(out / "gpu_check.json")
print(f"{out / 'gpu_check.json'}: {result['mode']}, gpu {result['gpu']}, cuda tests {tests}, {seconds} s")
EOF
# pytest exit 5 (no test collected) never happens here: tests/test_cuda.py always has tests, skipped without a GPU
[ "$pytest_rc" = 0 ] || { echo "gpu_check.sh: the CUDA tests failed (see $OUT/pytest_cuda.log)" >&2; exit 1; }
