#!/usr/bin/env bash
# tract against onnxruntime on the CPU, same run: the in-process floors (batch 1 and 64, one
# thread) and the server on each engine under HTTP load (concurrency 1 and 64), for
# tabular-small and mlp-large as shipped (their config.toml, with [engine] kind set), and for
# the 500-tree LightGBM classifier of the tree bench (lgbm-500: max_batch_size 64, 2 instances).
#
#   bash benches/load/ort_vs_tract.sh                     # builds the release binary and loadgen
#   MODELS=lgbm-500 bash benches/load/ort_vs_tract.sh     # only the trees
#
# Needs the onnxruntime wheel's library: ORT_DYLIB_PATH, or .venv (tests/compat/requirements.txt).
# Prints JSON lines; the table in benches/README.md was made from them.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-5}
: "${ORT_DYLIB_PATH:=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.* 2>/dev/null | head -1)}"
export ORT_DYLIB_PATH
[ -n "$ORT_DYLIB_PATH" ] || { echo "no onnxruntime library: set ORT_DYLIB_PATH" >&2; exit 1; }
cargo build --release -q
LOADGEN=${LOADGEN:-$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loadgen" and m.get("executable"):
        print(m["executable"])' | tail -1)}

MODELS=${MODELS:-tabular-small mlp-large lgbm-500}
declare -A WIDTH=([tabular-small]=32 [mlp-large]=256 [lgbm-500]=32)
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
# Where each model's version 1 and config come from: models/ for the shipped ones; the tree
# model is written to target/zoo-bench by the zoo generator and given a config and a 3-row
# sample here.
declare -A SRC
for model in $MODELS; do
  if [ "$model" = lgbm-500 ]; then
    [ -f target/zoo-bench/lgbm-500/model.onnx ] ||
      .venv/bin/python tests/models/zoo/generate.py --bench-model
    mkdir -p "$work/src/lgbm-500/1"
    cp target/zoo-bench/lgbm-500/model.onnx "$work/src/lgbm-500/1/"
    printf 'max_batch_size = 64\ninstances = 2\n\n[dynamic_batching]\nmax_queue_delay_us = 100\n' \
      > "$work/src/lgbm-500/config.toml"
    python3 -c 'import json, random
random.seed(3)
rows = [[round(random.gauss(0, 2), 4) for _ in range(32)] for _ in range(3)]
print(json.dumps({"inputs": [{"name": "input", "shape": [3, 32], "datatype": "FP32",
                              "data": rows}]}))' > "$work/src/lgbm-500/1/sample.json"
    SRC[$model]="$work/src/lgbm-500"
  else
    SRC[$model]="models/$model"
  fi
done
for model in $MODELS; do
  for engine in tract ort; do
    for batch in 1 64; do
      "$LOADGEN" floor --model "${SRC[$model]}/1/model.onnx" --width "${WIDTH[$model]}" \
        --batch "$batch" --threads 1 --duration "$DURATION" --engine "$engine" |
        sed "s/^{/{\"model\":\"$model\",\"kind\":\"floor\",/"
    done
  done
done

for engine in tract ort; do
  repo="$work/$engine"
  for model in $MODELS; do
    mkdir -p "$repo/$model"
    cp -r "${SRC[$model]}/1" "$repo/$model/"
    { grep -v '^\[engine\]' "${SRC[$model]}/config.toml"; printf '\n[engine]\nkind = "%s"\n' "$engine"; } \
      > "$repo/$model/config.toml"
  done
  log="$work/$engine.log"
  target/release/cairn serve --model-repository "$repo" --listen 127.0.0.1:0 --grpc-listen off \
    --onnxruntime-library "$ORT_DYLIB_PATH" 2> "$log" &
  server=$!
  addr=""
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$log" | head -1)
    [ -n "$addr" ] && curl -sf "http://$addr/v2/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  for model in $MODELS; do
    backend=$(curl -s "http://$addr/v2/models/$model/config" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backend"])')
    for c in 1 64; do
      "$LOADGEN" http --url "http://$addr/v2/models/$model/infer" --body "${SRC[$model]}/1/sample.json" \
        --concurrency "$c" --duration "$DURATION" --warmup 2 |
        sed "s/^{/{\"model\":\"$model\",\"kind\":\"served\",\"engine\":\"$backend\",\"concurrency\":$c,/"
    done
  done
  kill "$server"; wait "$server" 2>/dev/null || true
done
