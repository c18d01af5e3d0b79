#!/usr/bin/env bash
# The original's TESS-sized protocol, timed, on whatever device JAX sees (meant for a GPU):
#   1. generated data in the original's layout: 1960 train / 420 val / 420 test utterances,
#      768-d speech frames and text tokens (make_demo_data.py);
#   2. train.py with the original's hyperparameters (configs/default.py: 30 epochs, batch 32),
#      the four fusion heads, one seed, then five seeds (--seeds 0,1,2,3,4), each timed whole
#      (imports, data loading, compiling, 30 epochs with validation, plots and reports, exit);
#   3. the benchmark binary on 1960 utterances of the same shapes, float32 and bfloat16, and
#      with five seeds stacked: samples/s, compile time and model FLOP utilisation per head.
#
#   bash scripts/protocol.sh OUT_DIR [PEAK_TF32 PEAK_BF16]
#
# PEAK_* are the device's dense peak TFLOP/s (defaults: H100/H200 SXM, 495 and 989).
# Every step runs even if one before it failed; OUT_DIR/protocol.txt gets one line per step
# (wall seconds and exit status) and OUT_DIR the logs and JSON files. Environment:
# PYTHON (python3), WORK (scratch, /tmp/fusion_jax_protocol), SIZES ("1960 420 420"),
# DIM (768), EPOCHS (30), STEPS (default "data train1 train5 bench32 bench16 bench_seeds";
# also train1_at0 train5_at0 (no GPU autotuning), train1_notriton (no Triton GEMMs), fill warm1
# (persistent cache)). A first
# GPU run of "data train1" took about 6 minutes on an H200 (BUILD_NOTES.md, "GPU").
set -u
cd "$(dirname "$0")/.."
OUT_DIR=$(mkdir -p "${1:-protocol_out}" && cd "${1:-protocol_out}" && pwd)
PEAK_TF32=${2:-495}
PEAK_BF16=${3:-989}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/fusion_jax_protocol}
read -r N_TRAIN N_VAL N_TEST <<<"${SIZES:-1960 420 420}"
DIM=${DIM:-768}
EPOCHS=${EPOCHS:-30}
STEPS=${STEPS:-data train1 train5 bench32 bench16 bench_seeds}
export PYTHONUNBUFFERED=1
mkdir -p "$WORK"
SUMMARY="$OUT_DIR/protocol.txt"
: >"$SUMMARY"

step() {  # step NAME COMMAND...: runs it if NAME is in $STEPS, logs to OUT_DIR/NAME.log
  local name=$1; shift
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name: $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  # each line stamped with the seconds since the step began (where the fixed costs go)
  "$@" 2>&1 | "$PY" -u -c 'import sys, time
t0 = time.time()
for line in sys.stdin:
  print(f"{time.time() - t0:7.1f} {line}", end="")' >"$OUT_DIR/$name.log"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  tail -n 25 "$OUT_DIR/$name.log"
  printf '%-12s %8.1f s  exit %d  %s\n' "$name" "$(python3 -c "print($t1 - $t0)")" "$rc" "$*" \
    | tee -a "$SUMMARY"
}

$PY - <<'EOF' | tee -a "$SUMMARY"
import jax, flax, optax, orbax.checkpoint as ocp
d = jax.devices()[0]
print(f"jax {jax.__version__} flax {flax.__version__} optax {optax.__version__} "
      f"orbax {ocp.__version__}; {len(jax.devices())} x {d.platform} {d.device_kind}")
EOF

step data $PY experiments/make_demo_data.py --out_dir "$WORK/data" --speech_dim "$DIM" \
  --text_dim "$DIM" --train_size "$N_TRAIN" --val_size "$N_VAL" --test_size "$N_TEST"
# No persistent compilation cache: a first run, whose programs compile in parallel threads.
TRAIN=(experiments/train.py --config configs/default.py --data_dir "$WORK/data"
       --variants original --epochs "$EPOCHS" --compilation_cache_dir=)
step train1 $PY "${TRAIN[@]}" --model_dir "$WORK/m1" --results_dir "$OUT_DIR/results1"
step train5 $PY "${TRAIN[@]}" --seeds 0,1,2,3,4 --model_dir "$WORK/m5" \
  --results_dir "$OUT_DIR/results5"
# The same first runs without XLA's GPU autotuning (its kernel timings were most of the
# 210 s of compiling on an H200): what compile time it saves, what step time it costs.
AT0=(env "XLA_FLAGS=${XLA_FLAGS:-} --xla_gpu_autotune_level=0")
step train1_at0 "${AT0[@]}" $PY "${TRAIN[@]}" --model_dir "$WORK/m1_at0" \
  --results_dir "$OUT_DIR/results1_at0"
step train5_at0 "${AT0[@]}" $PY "${TRAIN[@]}" --seeds 0,1,2,3,4 --model_dir "$WORK/m5_at0" \
  --results_dir "$OUT_DIR/results5_at0"
# ... and with XLA's autotuning kept but its Triton GEMM candidates off (cuBLAS only).
NOTRITON=(env "XLA_FLAGS=${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false")
step train1_notriton "${NOTRITON[@]}" $PY "${TRAIN[@]}" --model_dir "$WORK/m1_nt" \
  --results_dir "$OUT_DIR/results1_notriton"
# A later run of the same shapes: "fill" compiles into a persistent cache, "warm1" is a
# fresh run (new model_dir) that finds every program there.
CACHED=(experiments/train.py --config configs/default.py --data_dir "$WORK/data"
        --variants original --epochs "$EPOCHS" --compilation_cache_dir="$WORK/xla")
step fill $PY "${CACHED[@]}" --model_dir "$WORK/m_fill" --results_dir "$WORK/r_fill"
step warm1 $PY "${CACHED[@]}" --model_dir "$WORK/m_warm" --results_dir "$OUT_DIR/results_warm"
BENCH=(experiments/benchmark.py --num_utterances "$N_TRAIN" --feature_dim "$DIM" --repeats 3
       --compilation_cache_dir=)
step bench32 $PY "${BENCH[@]}" --peak_tflops "$PEAK_TF32" --json_out "$OUT_DIR/bench32.json"
step bench16 $PY "${BENCH[@]}" --dtype bfloat16 --peak_tflops "$PEAK_BF16" \
  --json_out "$OUT_DIR/bench16.json"
step bench_seeds $PY "${BENCH[@]}" --parallel_seeds 5 --peak_tflops "$PEAK_TF32" \
  --json_out "$OUT_DIR/bench_seeds.json"
echo "== summary ($SUMMARY)"
cat "$SUMMARY"
