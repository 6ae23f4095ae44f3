#!/usr/bin/env bash
# All training benchmarks in one call on a two-GPU machine (results in $OUT, summary printed last):
#   GPU 0: QLoRA step of openvla-7b (random weights) with the base in 4-bit, then in 8-bit;
#   GPU 1 (meanwhile): from-scratch training throughput of a small preset, one process;
#   then both GPUs: the same training, data-parallel (accelerate launch, 2 processes).
# Usage (device machine, repo root): bash bench/bench_training_gpu.sh   [needs .carry/wheels/bitsandbytes-*.whl]
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/bench_out}
mkdir -p "$OUT"
pip install -q --no-deps --target /tmp/bnb .carry/wheels/bitsandbytes-*.whl >/dev/null 2>&1 || echo "bitsandbytes install failed"
export PYTHONPATH=/tmp/bnb:.
PRESET=${PRESET:-small-224}
BATCH=${BATCH:-128}
STEPS=${STEPS:-60}
TRAIN_ARGS="--synthetic 8192 --preset $PRESET --steps $STEPS --batch-size $BATCH --num-workers 6 --log-every 20
  --warmup-steps 5 --no-progress --save-every-minutes 100"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpus.txt"
python -c "import torch, transformers, peft, accelerate, bitsandbytes, timm; print('torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__,
'bitsandbytes', bitsandbytes.__version__, 'timm', timm.__version__)" 2>&1 | tail -1 | tee "$OUT/versions.txt"

( CUDA_VISIBLE_DEVICES=1 timeout 150 python -m training.train $TRAIN_ARGS --out /tmp/train1 >"$OUT/train1.log" 2>&1
  cp /tmp/train1/train_result.json "$OUT/train1.json" 2>/dev/null ) &
for q in 4bit 8bit; do
  CUDA_VISIBLE_DEVICES=0 timeout 170 python bench/bench_training.py lora --quantization $q --json "$OUT/lora_$q.json" \
    >"$OUT/lora_$q.log" 2>&1 || echo "lora $q failed: $(tail -3 "$OUT/lora_$q.log")"
done
wait
timeout 150 python -m accelerate.commands.launch --multi_gpu --num_processes 2 --mixed_precision bf16 -m training.train $TRAIN_ARGS \
  --out /tmp/train2 >"$OUT/train2.log" 2>&1 || echo "2-GPU run failed: $(tail -5 "$OUT/train2.log")"
cp /tmp/train2/train_result.json "$OUT/train2.json" 2>/dev/null
python - "$OUT" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("lora_4bit", "lora_8bit", "train1", "train2"):
    f = out / f"{name}.json"
    if not f.is_file():
        print(name, "missing"); continue
    r = json.loads(f.read_text())
    keep = {k: r.get(k) for k in ("device", "quantization", "peak_allocated_gib", "peak_reserved_gib",
                                  "base_weights_gib", "step_s_median", "samples_per_s", "build_s", "loss", "step",
                                  "wall_s", "trainable_params")}
    print(name, json.dumps({k: v for k, v in keep.items() if v is not None}))
EOF
