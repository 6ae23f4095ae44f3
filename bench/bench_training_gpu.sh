#!/usr/bin/env bash
# All training benchmarks in one call on a two-GPU machine (JSON results in $OUT, summary printed last):
#   (Q)LoRA step of openvla-7b (random weights) with the base in 4-bit, 8-bit (or bf16: LORA_QUANTS=none);
#   from-scratch training throughput of small presets on one GPU, then data-parallel on two
#   (accelerate launch, 2 processes, same per-process batch).
# Usage (device machine, repo root): [LORA_QUANTS="4bit 8bit"] [PRESETS="tiny-128 small-224"] [STEPS=100]
#   bash bench/bench_training_gpu.sh          (needs .carry/wheels/bitsandbytes-*.whl for 4/8-bit)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT" /tmp/logs
LOGS=/tmp/logs
pip install -q --no-deps --target /tmp/bnb .carry/wheels/bitsandbytes-*.whl >/dev/null 2>&1 || echo "bitsandbytes install failed"
export PYTHONPATH=/tmp/bnb:.
PRESET=${PRESET:-small-224}
BATCH=${BATCH:-128}
STEPS=${STEPS:-60}
TRAIN_ARGS="--synthetic 8192 --steps $STEPS --batch-size $BATCH --num-workers 6 --log-every ${LOG_EVERY:-20}
  --warmup-steps 5 --no-progress --save-every-minutes 100"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
python -c "import torch, transformers, peft, accelerate, bitsandbytes, timm; print('torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__,
'bitsandbytes', bitsandbytes.__version__, 'timm', timm.__version__)" 2>&1 | tail -1 | tee "$OUT/versions.txt"

# LORA_QUANTS: which bases to step (none = bf16); PRESETS: from-scratch presets, each on 1 then 2 GPUs.
# CONCURRENT=1 runs the first preset's 1-GPU training on GPU 1 while GPU 0 does the LoRA steps (saves time,
# but shares the host's CPUs); the default runs everything one after the other.
LORA_QUANTS=${LORA_QUANTS:-"4bit 8bit"}
PRESETS=${PRESETS:-$PRESET}
train1() {  # $1 preset
  CUDA_VISIBLE_DEVICES=${2:-0} timeout 150 python -m vla_ros.training.train $TRAIN_ARGS --preset "$1" --out "/tmp/train1_$1" \
    >"$LOGS/train1_$1.log" 2>&1 || echo "1-GPU $1 failed: $(tail -3 "$LOGS/train1_$1.log")"
  cp "/tmp/train1_$1/train_result.json" "$OUT/train1_$1.json" 2>/dev/null
}
train2() {
  timeout 150 python -m accelerate.commands.launch --multi_gpu --num_processes 2 --mixed_precision bf16 \
    -m vla_ros.training.train $TRAIN_ARGS --preset "$1" --out "/tmp/train2_$1" >"$LOGS/train2_$1.log" 2>&1 \
    || echo "2-GPU $1 failed: $(tail -5 "$LOGS/train2_$1.log")"
  cp "/tmp/train2_$1/train_result.json" "$OUT/train2_$1.json" 2>/dev/null
}
first=${PRESETS%% *}
if [ "${CONCURRENT:-0}" = 1 ]; then train1 "$first" 1 & fi
for q in $LORA_QUANTS; do
  CUDA_VISIBLE_DEVICES=0 timeout 170 python bench/bench_training.py lora --quantization $q --json "$OUT/lora_$q.json" \
    >"$LOGS/lora_$q.log" 2>&1 || echo "lora $q failed: $(tail -3 "$LOGS/lora_$q.log")"
done
wait
for p in $PRESETS; do
  if [ "${CONCURRENT:-0}" != 1 ] || [ "$p" != "$first" ]; then train1 "$p"; fi
  train2 "$p"
done
python - "$OUT" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    name = f.stem
    r = json.loads(f.read_text())
    keep = {k: r.get(k) for k in ("device", "quantization", "peak_allocated_gib", "peak_reserved_gib",
                                  "base_weights_gib", "step_s_median", "samples_per_s", "build_s", "loss", "step",
                                  "wall_s", "trainable_params")}
    print(name, json.dumps({k: v for k, v in keep.items() if v is not None}))
EOF
