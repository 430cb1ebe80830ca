#!/usr/bin/env bash
# The GPU benchmark and check, as one short script for a CUDA host (no registry needed there).
#
#   bash benches/gpu/run.sh prepare   # here, on the build machine: release cairn + loadgen,
#                                     # stripped and xz'd, into benches/gpu/bin/ (about 20 MB:
#                                     # carry that folder and models/ over)
#   bash benches/gpu/run.sh           # on the GPU host, from the repository root
#
# On the GPU host it runs, writing everything to ${OUT:-benches/results}/gpu-*.txt:
#   1. `cairn selftest --bench`: the CUDA engine (fp32, tf32) and onnxruntime's CUDA provider
#      (where the onnxruntime library has it) against tract on the shipped models; rows/s and
#      p50/p99 per engine at batch 1, 64, 1024 and 8192, copies included; the plan's SGEMMs
#      alone at 8192 rows (the figure the engine floor is read against);
#   2. the in-process floor of mlp-large (256 -> 1024 -> 1024 -> 10) per engine at the same
#      batch sizes (loadgen floor);
#      with the CUDA engine's graphs on and off (CAIRN_CUDA_GRAPHS=off);
#   3. the server on mlp-large with `[engine] kind = "cuda"` (max_batch_size 1024) under HTTP
#      load at concurrency 64 and 256 (loadgen http, binary tensors off: the JSON sample).
# onnxruntime points need ORT_DYLIB_PATH naming a libonnxruntime (onnxruntime-gpu for its CUDA
# provider); without one they say they did not load. Nothing here has run on a GPU yet.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-benches/gpu/bin}
# A dry run on a CPU host (the script itself checked): ALLOW_NO_GPU=1 SERVER_ENGINE=tract.
SERVER_ENGINE=${SERVER_ENGINE:-cuda}

if [ "${1:-}" = "prepare" ]; then
  cargo build --release
  loadgen=$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loadgen" and m.get("executable"):
        print(m["executable"])' | tail -1)
  mkdir -p "$BIN"
  # Stripped and compressed: about 20 MB to carry to the GPU host instead of 580.
  rm -f "$BIN"/*
  strip -o "$BIN/cairn" target/release/cairn
  strip -o "$BIN/loadgen" "$loadgen"
  xz -T0 -6 "$BIN/cairn" "$BIN/loadgen"
  ls -la "$BIN"
  exit 0
fi
for tool in cairn loadgen; do
  if [ ! -x "$BIN/$tool" ] && [ -f "$BIN/$tool.xz" ]; then
    xz -dkc "$BIN/$tool.xz" > "$BIN/$tool" && chmod +x "$BIN/$tool"
  fi
done

# cuBLAS and NVRTC from pip's nvidia-* wheels, where a Python environment has them and
# CAIRN_CUDA_LIBRARY_PATH does not already say where they are.
if [ -z "${CAIRN_CUDA_LIBRARY_PATH:-}" ]; then
  for py in .venv/bin/python python3; do
    site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) || continue
    [ -d "$site/nvidia" ] && CAIRN_CUDA_LIBRARY_PATH="${CAIRN_CUDA_LIBRARY_PATH:+$CAIRN_CUDA_LIBRARY_PATH:}$site/nvidia"
  done
  export CAIRN_CUDA_LIBRARY_PATH
fi
echo "CUDA libraries from: ${CAIRN_CUDA_LIBRARY_PATH:-the dynamic loader path}"

OUT=${OUT:-benches/results}
mkdir -p "$OUT"
SECONDS_PER_POINT=${SECONDS_PER_POINT:-2}
MODEL=models/mlp-large/1/model.onnx

echo "== 1. selftest"
set +e
"$BIN/cairn" selftest --bench --seconds "$SECONDS_PER_POINT" | tee "$OUT/gpu-selftest.txt"
selftest=${PIPESTATUS[0]}
set -e
if [ "$selftest" -eq 2 ] && [ -z "${ALLOW_NO_GPU:-}" ]; then echo "no GPU: nothing to measure"; exit 2; fi

echo "== 2. engine floors, mlp-large"
: > "$OUT/gpu-floors.txt"
for engine in cuda tract ort; do
  for batch in 1 64 1024 8192; do
    "$BIN/loadgen" floor --model "$MODEL" --width 256 --batch "$batch" --threads 1 \
      --duration "$SECONDS_PER_POINT" --engine "$engine" 2>/dev/null | tee -a "$OUT/gpu-floors.txt" ||
      echo "{\"engine\": \"$engine\", \"batch\": $batch, \"error\": \"did not load\"}" | tee -a "$OUT/gpu-floors.txt"
  done
done
# The same CUDA floors with the steps launched one by one: what the captured graphs save.
for batch in 1 64 1024 8192; do
  CAIRN_CUDA_GRAPHS=off "$BIN/loadgen" floor --model "$MODEL" --width 256 --batch "$batch" --threads 1 \
    --duration "$SECONDS_PER_POINT" --engine cuda 2>/dev/null | sed 's/"engine":"cuda"/"engine":"cuda, no graphs"/' |
    tee -a "$OUT/gpu-floors.txt" || true
done

echo "== 3. the server on the GPU under HTTP load"
repo=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$repo"' EXIT
mkdir -p "$repo/mlp-large/1"
cp "$MODEL" models/mlp-large/1/sample.json "$repo/mlp-large/1/"
cat > "$repo/mlp-large/config.toml" <<TOML
max_batch_size = 1024
instances = 2

[engine]
kind = "$SERVER_ENGINE"

[dynamic_batching]
max_queue_delay_us = 200
TOML
log="$OUT/gpu-server.log"
"$BIN/cairn" serve --model-repository "$repo" --listen 127.0.0.1:0 --grpc-listen off \
  --state-dir "$repo/.state" 2> "$log" &
server=$!
addr=""
for _ in $(seq 1 600); do
  addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$log" | head -1)
  [ -n "$addr" ] && curl -sf "http://$addr/v2/models/mlp-large/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -s "http://$addr/v2/models/mlp-large/config" | tee "$OUT/gpu-config.json"; echo
: > "$OUT/gpu-http.txt"
for c in 64 256; do
  "$BIN/loadgen" http --url "http://$addr/v2/models/mlp-large/infer" \
    --body models/mlp-large/1/sample.json --concurrency "$c" --duration 10 --warmup 2 |
    tee -a "$OUT/gpu-http.txt"
done
curl -s "http://$addr/metrics" | grep -E '^cairn_(inference_rows_total|execution_total|gpu_)' | tee -a "$OUT/gpu-http.txt"
echo "== done: $OUT/gpu-*.txt"
