#!/usr/bin/env bash
# The prepared GPU check: one script, under 8 minutes on one GPU, printing ONE JSON object.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry [key=value ...]   # tiny and on the CPU (what the test runs); the
#                                           # overrides go to every throughput run (e.g. a data.root)
#
# What it measures (each part a benchmark script of this folder, which prints its own JSON):
#   throughput  benchmarks/throughput.py on the main recipe: images/s of the full step and of the bare
#               forward + backward, their ratio and the peak GPU memory, for fp32, bf16 and fp16, each
#               with and without channels-last, and compiled (inductor) with channels-last;
#   decode      benchmarks/decode.py: ResNet-50 at 224 px on folder JPEGs decoded on the GPU against in
#               the data workers;
#   peers       benchmarks/peers.py on the GPU: equissl's SimCLR step against lightly's pipeline (skipped
#               with a reason when lightly, the bench extra, is not installed).
# A part that fails or runs past its time limit is recorded with its error; the others still run.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DRY=0
if [[ "${1:-}" == "--dry" ]]; then
  DRY=1
  shift
fi
EXTRA=("$@")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if ((DRY)); then
  STEPS=(--steps 1 --warmup 0 --rounds 1)
  BASE=(trainer.batch_size=4 data.image_size=32 augment.crop_size=32 backbone.stem=strided
        objective.proj_hidden_dim=32 objective.proj_out_dim=16 data.num_workers=0 trainer.device=cpu)
  PRECISIONS=(fp16)  # the one with most machinery (autocast, loss scale); the others share the code
  LAYOUTS=(false)
  COMPILE=(trainer.compile=true trainer.compile_backend=aot_eager)
  DECODE=(--dry)
  PEERS=(--dry --device cpu --precision fp32 --workers 0)
  LIMIT=300
else
  STEPS=(--steps 20 --warmup 5 --rounds 3)
  BASE=(data.num_workers=8 trainer.batch_size=256)
  PRECISIONS=(fp32 bf16 fp16)
  LAYOUTS=(false true)
  COMPILE=(trainer.compile=true)
  DECODE=(--images 1024 --batch-size 128 --workers 8 --steps 10 --warmup 3 --rounds 2)
  PEERS=(--device cuda --workers 8 --rounds 3 --precision bf16)
  LIMIT=240
fi

# run NAME COMMAND...: its stdout (one JSON object) to $OUT/NAME.json, or an error record.
run() {
  local name=$1
  shift
  local started=$SECONDS
  if timeout "$LIMIT" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"; then
    cp "$OUT/$name.out" "$OUT/$name.json"
  else
    local code=$?
    "$PYTHON" -c 'import json, sys; print(json.dumps({"error": f"exit {sys.argv[1]}", "stderr_tail": open(sys.argv[2]).read()[-1500:]}))' \
      "$code" "$OUT/$name.err" >"$OUT/$name.json"
  fi
  echo "gpu_check: $name took $((SECONDS - started)) s" >&2
}

for precision in "${PRECISIONS[@]}"; do
  for layout in "${LAYOUTS[@]}"; do
    run "throughput_${precision}_nhwc-${layout}" "$PYTHON" benchmarks/throughput.py "${STEPS[@]}" \
      "${BASE[@]}" "trainer.precision=$precision" "trainer.channels_last=$layout" "${EXTRA[@]}"
  done
  run "throughput_${precision}_nhwc-true_compiled" "$PYTHON" benchmarks/throughput.py "${STEPS[@]}" \
    "${BASE[@]}" "trainer.precision=$precision" trainer.channels_last=true "${COMPILE[@]}" "${EXTRA[@]}"
done
run decode "$PYTHON" benchmarks/decode.py "${DECODE[@]}"
run peers "$PYTHON" benchmarks/peers.py "${PEERS[@]}" "${EXTRA[@]}"

"$PYTHON" - "$OUT" "$DRY" <<'EOF'
import json, pathlib, sys

import torch

out, dry = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
parts = {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("*.json"))}
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(json.dumps({"dry": dry, "device": device, "torch": torch.__version__, **parts}, indent=1))
EOF
