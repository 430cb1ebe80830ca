#!/usr/bin/env bash
# tract against onnxruntime on the CPU, same run: the in-process floors (batch 1 and 64, one
# thread) and the server on each engine under HTTP load (concurrency 1 and 64), for
# tabular-small and mlp-large as shipped (their config.toml, with [engine] kind set).
#
#   bash benches/load/ort_vs_tract.sh            # builds the release binary and loadgen
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

declare -A WIDTH=([tabular-small]=32 [mlp-large]=256)
for model in tabular-small mlp-large; do
  for engine in tract ort; do
    for batch in 1 64; do
      "$LOADGEN" floor --model "models/$model/1/model.onnx" --width "${WIDTH[$model]}" \
        --batch "$batch" --threads 1 --duration "$DURATION" --engine "$engine" |
        sed "s/^{/{\"model\":\"$model\",\"kind\":\"floor\",/"
    done
  done
done

work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
for engine in tract ort; do
  repo="$work/$engine"
  for model in tabular-small mlp-large; do
    mkdir -p "$repo/$model"
    cp -r "models/$model/1" "$repo/$model/"
    { grep -v '^\[engine\]' "models/$model/config.toml"; printf '\n[engine]\nkind = "%s"\n' "$engine"; } \
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
  for model in tabular-small mlp-large; do
    backend=$(curl -s "http://$addr/v2/models/$model/config" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backend"])')
    for c in 1 64; do
      "$LOADGEN" http --url "http://$addr/v2/models/$model/infer" --body "models/$model/1/sample.json" \
        --concurrency "$c" --duration "$DURATION" --warmup 2 |
        sed "s/^{/{\"model\":\"$model\",\"kind\":\"served\",\"engine\":\"$backend\",\"concurrency\":$c,/"
    done
  done
  kill "$server"; wait "$server" 2>/dev/null || true
done
