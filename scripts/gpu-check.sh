#!/usr/bin/env bash
# What a person with a CUDA GPU runs to check Neuratlas on it (the test suite needs no GPU):
#   1. every family's quick recipe (the tour's), STEPS steps, on the GPU in bf16 and in fp16 (gradient scaler),
#      and the same steps on the CPU as the reference: held-out metric and samples/s, speed-up = GPU / CPU;
#   2. DDP over all visible GPUs (and FSDP for the GPT) with the same global batch;
#   3. generation from the GPT checkpoint on the GPU; export (ONNX) where the export command exists.
# It prints one table (and writes it to $OUT/gpu-check.md). The GPU's metric should equal the CPU's within
# noise (bf16/fp16 rounding, different kernels).
#
#   scripts/gpu-check.sh                 # STEPS=300, every quick recipe
#   STEPS=500 FAMILIES="gpt convnet" CPU=0 scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
STEPS=${STEPS:-300}
OUT=${OUT:-runs/gpu-check}
CPU=${CPU:-1}              # 1: also train each recipe on the CPU (the reference metric and speed)
FAMILIES=${FAMILIES:-}     # space-separated families; empty: all
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$NGPU" = 0 ]; then
  echo "error: this PyTorch sees no CUDA GPU ($("$PY" -c 'import torch; print(torch.__version__)')); install a CUDA build of torch" >&2
  exit 2
fi
mkdir -p "$OUT"
LOG="$OUT/log.txt"; : > "$LOG"
ROWS="$OUT/rows.tsv"; : > "$ROWS"
echo "GPUs: $NGPU × $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))'); CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"

# the tour's recipes on the one trainer (recipes with their own runner take no trainer options)
RECIPES=$("$PY" - "$FAMILIES" <<'EOF'
import sys
from neuratlas.tour import tour_recipes
fams = sys.argv[1].split() or None
print(" ".join(r.name for r in tour_recipes(fams) if r.runner is None))
EOF
)

COMMON=(--trainer.max_steps "$STEPS" --trainer.time_limit null --trainer.progress false
        --trainer.out_dir "$OUT" --trainer.loggers csv)

# train NAME KIND [launcher...] -- [options...]: one run, one row (kind, recipe, result.json's figures)
train() {
  local recipe=$1 kind=$2; shift 2
  local launcher=() opts=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do launcher+=("$1"); shift; done
  shift
  opts=("$@")
  local name="$recipe-$kind"
  echo "== $name" | tee -a "$LOG"
  if "${launcher[@]}" train "$recipe" "${COMMON[@]}" --trainer.run_name "$name" "${opts[@]}" >>"$LOG" 2>&1; then
    printf '%s\t%s\t%s\n' "$recipe" "$kind" "$OUT/$name/result.json" >>"$ROWS"
  else
    printf '%s\t%s\tFAILED (see %s)\n' "$recipe" "$kind" "$LOG" >>"$ROWS"
  fi
}

ONE=("$PY" -m neuratlas)
MANY=("$PY" -m torch.distributed.run --nproc-per-node "$NGPU" --master-addr 127.0.0.1 --master-port 29533 -m neuratlas)
for r in $RECIPES; do
  [ "$CPU" = 1 ] && train "$r" cpu "${ONE[@]}" -- --trainer.device cpu --trainer.precision auto
  train "$r" gpu-bf16 "${ONE[@]}" -- --trainer.device cuda --trainer.precision bf16
  train "$r" gpu-fp16 "${ONE[@]}" -- --trainer.device cuda --trainer.precision fp16
  if [ "$NGPU" -gt 1 ]; then
    train "$r" "ddp×$NGPU-bf16" "${MANY[@]}" -- --trainer.device cuda --trainer.precision bf16 --trainer.strategy ddp
  fi
done
GPT=gpt-shakespeare-char-quick
if [ "$NGPU" -gt 1 ] && [[ " $RECIPES " == *" $GPT "* ]]; then
  train "$GPT" "fsdp×$NGPU-bf16" "${MANY[@]}" -- --trainer.device cuda --trainer.precision bf16 --trainer.strategy fsdp \
    --trainer.activation_checkpointing true
fi

# generation and export from the GPU-trained GPT
EXTRA=()
if [ -f "$OUT/$GPT-gpu-bf16/checkpoints/last.safetensors" ]; then
  if "$PY" -m neuratlas generate "$OUT/$GPT-gpu-bf16" --prompt "ROMEO:" --max_new_tokens 200 --seed 0 --device cuda \
      >"$OUT/generated.txt" 2>>"$LOG"; then
    EXTRA+=("generation: $(wc -c <"$OUT/generated.txt") characters in $OUT/generated.txt")
  else
    EXTRA+=("generation: FAILED (see $LOG)")
  fi
  if "$PY" -m neuratlas export --help >/dev/null 2>&1; then
    if "$PY" -m neuratlas export "$OUT/$GPT-gpu-bf16" --format onnx --out "$OUT/export-onnx" --force >>"$LOG" 2>&1; then
      EXTRA+=("export: ONNX in $OUT/export-onnx")
    else
      EXTRA+=("export: FAILED (see $LOG)")
    fi
  else
    EXTRA+=("export: this version has no export command")
  fi
fi

"$PY" - "$ROWS" "$OUT/gpu-check.md" "${EXTRA[@]}" <<'EOF'
import json, sys
rows_file, out, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
rows, cpu_sps = [], {}
for line in open(rows_file):
    recipe, kind, where = line.rstrip("\n").split("\t")
    if where.startswith("FAILED"):
        rows.append((recipe, kind, where, "", "", "", ""))
        continue
    r = json.load(open(where))
    sps = r["samples_per_second"]
    if kind == "cpu":
        cpu_sps[recipe] = sps
    rows.append((recipe, kind, f"test {r['metric']}", f"{r['test'].get(r['metric'], float('nan')):.4f}",
                 str(r["steps"]), f"{sps:,.0f}", sps))
lines = ["| recipe | run | metric | value | steps | samples/s | speed-up vs CPU |", "|---|---|---|---|---|---|---|"]
for recipe, kind, metric, value, steps, sps_text, sps in rows:
    speed = f"{sps / cpu_sps[recipe]:.1f}×" if isinstance(sps, float) and recipe in cpu_sps and kind != "cpu" else ""
    lines.append(f"| {recipe} | {kind} | {metric} | {value} | {steps} | {sps_text} | {speed} |")
text = "\n".join(lines + [""] + [f"- {e}" for e in extra]) + "\n"
open(out, "w").write(text)
print(text)
EOF
