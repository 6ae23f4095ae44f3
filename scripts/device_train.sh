#!/bin/bash
# Train tiny-128 on one lent GPU from a compact dataset, the way docs/training.md's runs were made.
#   usage: scripts/device_train.sh DATA NAME MINUTES STEPS WORKERS [more vla_ros.training.train flags, e.g. --init-from DIR]
#   DATA may name several datasets, comma-separated: they train as one (statistics over all of them).
# Runs on the device machine from the repo root (DATA carried there, e.g. .carry/libero_scripted_v3). The policy
# comes back under $OUT/NAME as policy_json.tar plus the weights split in 12 MiB parts (a single 36 MiB file is
# over the return limit): `tar -xf NAME/policy_json.tar -C DIR; cat NAME/model.part.* > DIR/model.safetensors`
# here, and compare the printed sha256.
# Set STEPS so that STEPS / (~14 steps/s) fits MINUTES: the cosine schedule should end before the time limit.
# Decoding the videos comes first (~2 min for 114k steps): MINUTES + that must fit the 10-minute command limit.
# NPROC=N (environment) trains data-parallel on N GPUs of the machine with `accelerate launch` (batch 64 a GPU;
# WORKERS a process). Run the same command again to go on: training resumes from /root/runs/NAME.
set -eo pipefail
DATA=$1; NAME=$2; MIN=$3; STEPS=$4; W=$5; shift 5
IFS=, read -ra DATA_PATHS <<< "$DATA"
: "${OUT:?OUT must name the folder that comes back}"
RUN=/root/runs/$NAME
mkdir -p /root/runs "$OUT/$NAME"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi: CPU run"
python -c "import torch, transformers, timm; print('torch', torch.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
NPROC=${NPROC:-1}
if [ "$NPROC" -gt 1 ]; then
  # one math thread a process: the DataLoader workers use the cores (docs/benchmarks.md, 4-GPU row)
  export OMP_NUM_THREADS=1
  LAUNCH=(accelerate launch --multi_gpu --num_processes "$NPROC" -m vla_ros.training.train)
else
  LAUNCH=(python -m vla_ros.training.train)
fi
# vla_ros.training and vla_ros.sim are setup.py's package_dir names for training/ and sim_bridge/ (the device has
# no install of this checkout): lay the package out the way an install does, without pip or a registry.
LIB=/root/vla_ros_lib
rm -rf "$LIB" && python setup.py -q build_py --build-lib "$LIB" >/dev/null 2>&1
PYTHONPATH=$LIB "${LAUNCH[@]}" --data "${DATA_PATHS[@]}" --preset tiny-128 --out "$RUN" \
  --num-workers "$W" --batch-size 64 --steps "$STEPS" --max-minutes "$MIN" --save-every-minutes 4 --keep-checkpoints 1 \
  --wrist --proprio --predict-done --augment --no-progress --log-every 200 "$@" 2>&1 \
  | grep --line-buffered -v "^\s*$" | tail -n 120
# the JSON files travel as one tar: the return also caps the number of files
(cd "$RUN" && tar -cf "$OUT/$NAME/policy_json.tar" ./*.json)
split -b 12M "$RUN/model.safetensors" "$OUT/$NAME/model.part."
sha256sum "$RUN/model.safetensors"
ls -la "$OUT/$NAME"
