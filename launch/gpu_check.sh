#!/usr/bin/env bash
# GPU check of issue 15 on one H100/H200, about 8 minutes: the paper-scale planning benchmark
# (AdaLN predictor 16x16x384, depth 6, 16 heads, bf16, CEM 300 samples x 30 iterations, horizon
# 6, 1 and 8 episodes) against the PyTorch baseline on the same GPU, then a short 224-px
# pipeline smoke (data, stage 1, stage 2, planning at smoke sizes).
#
#   launch/gpu_check.sh [OUT_DIR]              # on the GPU machine (default OUT_DIR /tmp/gpu_check)
#   launch/gpu_check.sh --dry-run [OUT_DIR]    # anywhere, on the CPU: tiny sizes, 64-px smoke
#
# Prints s/plan (jepa_jax and torch, and their ratio), achieved TFLOP/s and MFU against the
# data-sheet dense bf16 peak (H100 SXM / H200 989.4 TFLOP/s, H100 PCIe 756: see
# jepa_jax/diagnostics/benchmark.py BF16_PEAK_TFLOPS), peak memory and compile time; writes
# OUT_DIR/bench.json, OUT_DIR/bench.log, OUT_DIR/smoke.log and the smoke's OUT_DIR/smoke/.
# It installs only what is missing, and says so: the package with its test extra (torch), and on
# a GPU run jax[cuda12]. Nothing in CI runs this script.
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
if [[ $# -gt 1 || "${1:-}" == -* ]]; then
  echo "usage: $0 [--dry-run] [OUT_DIR]" >&2
  exit 2
fi
out=${1:-/tmp/gpu_check}
cd "$(dirname "$0")/.."
mkdir -p "$out"
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start )) s] $*"; }

step "environment"
if ! python -c 'import jepa_jax, torch' 2>/dev/null; then
  echo "+ pip install -e '.[test]'   (jepa_jax or torch missing)"
  pip install -e '.[test]'
fi
if (( dry_run )); then
  export JAX_PLATFORMS=cpu
else
  if ! python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
    echo "+ pip install -U 'jax[cuda12]'   (JAX sees no GPU)"
    pip install -U 'jax[cuda12]'
  fi
  if ! python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo "WARNING: torch has no CUDA: the torch baseline would run on the CPU; install a CUDA" \
         "build of torch (pip install torch from PyPI on Linux) and rerun" >&2
    exit 1
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  # Let XLA take most of the GPU (the default is 75 %); torch allocates what is left.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.7}
fi
python -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "| torch",
  torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'

step "planning benchmark (jepa_jax vs the PyTorch baseline, same weights)"
if (( dry_run )); then
  bench=(--presets=tiny --episodes=1,2 --repeats=1 --max_devices=2)
else
  # 1 episode: the reference's unit of work; 8 episodes batched on the one GPU. Candidates are
  # scored 100 at a time (8 x 300 at once would hold ~40 GB of attention logits per layer);
  # override with BENCH_FLAGS=--chunk_size=N (0 = all at once on a GPU).
  bench=(--presets=paper_gpu --episodes=1,8 --repeats=2 --torch_repeats=1
         --peak_n=8192 --dtype=bfloat16 --chunk_size=100)
fi
python -m experiments.bench_planning "${bench[@]}" ${BENCH_FLAGS:-} \
    --out="$out/bench.json" 2>&1 | grep -v -e '^W0' -e '^I0' | tee "$out/bench.log"

step "224-px pipeline smoke"
size=224
(( dry_run )) && size=${SMOKE_SIZE:-64}
smoke=(--config=experiments/configs/wall.py:smoke --config.data.image_size="$size"
       --config.encoder.image_size="$size")
if (( dry_run )); then  # a handful of steps: the dry run checks the commands, not the results
  smoke+=(--config.data.num_train_trajectories=16 --config.data.num_validation_trajectories=8
          --config.pretrain.num_steps=2 --config.pretrain.warmup_steps=1
          --config.world_model.num_steps=2
          --config.planning.num_episodes=2 --config.planning.cem.num_samples=16
          --config.planning.cem.num_iters=1)
fi
rm -rf "$out/smoke"
python -m experiments.run_pipeline --workdir="$out/smoke" "${smoke[@]}" 2>&1 \
    | grep -v -e '^W0' -e '^I0' | tee "$out/smoke.log" | tail -n 25

step "summary"
python - "$out/bench.json" <<'EOF'
import json, sys
def fmt(value, spec):  # JSON null (a NaN: no data-sheet peak, no device counter) -> n/a
  return 'n/a' if value is None else format(value, spec)
for r in json.load(open(sys.argv[1]))['results']:
  print(f"{r['device_kind']}: {r['spec']['samples']} samples x {r['spec']['iters']} iterations, "
        f"horizon {r['spec']['horizon']}, {r['spec']['dtype']}, {r['plan_gflop'] / 1e3:.1f} "
        f"TFLOP per plan; MFU peak {fmt(r['mfu_peak_tflops'], '')} TFLOP/s (dense bf16, data sheet)")
  print(f"  parity: max |cost_jax - cost_torch| {r['parity']['max_abs_diff']:.3g} (float32)")
  for w in r['rows']:
    print(f"  {w['episodes']} episode(s): jepa_jax {w['jax_s_per_plan']:.3f} s/plan, torch "
          f"{fmt(w['torch_s_per_plan'], '.3f')} s/plan ({fmt(w['speedup'], '.2f')}x), "
          f"{fmt(w['jax_tflop_per_s'], '.1f')} TFLOP/s, MFU {fmt(w['jax_mfu'], '.1%')} (torch "
          f"{fmt(w['torch_mfu'], '.1%')}), compile {w['jax_compile_s']:.1f} s, memory "
          f"{fmt(w['jax_xla_memory_gb'], '.2f')} GB (XLA temp+args) / "
          f"{fmt(w['jax_device_peak_gb'], '.2f')} GB (device peak), torch "
          f"{fmt(w['torch_peak_gb'], '.2f')} GB")
EOF
echo "smoke summary: $out/smoke/summary.json"
step "done"
