#!/usr/bin/env bash
# Reproduce the shipped default model from nothing: every stage trained on ShapeWorld, then the
# EMA weights exported as fp16 into cascade/weights/shapes. Resumable: run it again after an
# interruption and each stage continues from its last checkpoint; finished stages are skipped.
#
#   tools/train_shapes.sh [STATE_DIR]     (default: $CASCADE_TRAIN_DIR or ~/.cache/cascade/shapes)
#
# Environment: STAGES (default "clip prior sr256 sr1024 decoder": CLIP first, the rest in any
# order), MAX_MINUTES (stop each stage after this many minutes of this call; resume later),
# INIT=shipped (start a new state directory from the shipped weights instead of random ones, to
# continue training them on a machine that lost the state: then leave clip out of STAGES, since
# the other stages are trained against the shipped CLIP; optimiser state starts afresh).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
state=${1:-${CASCADE_TRAIN_DIR:-$HOME/.cache/cascade/shapes}}
config=$here/configs/shapes.toml
mkdir -p "$state"
# the prior and the decoder train on the same pool with the same CLIP: encode it once for both
export CASCADE_EMBEDDING_CACHE=${CASCADE_EMBEDDING_CACHE:-$state/cache}
if [ ! -f "$state/model/model_index.json" ]; then
  if [ "${INIT:-}" = shipped ]; then
    python "$here/tools/export_model.py" "$here/cascade/weights/shapes" "$state/model"   # fp16 -> fp32
  else
    cascade init "$config" "$state/model"
  fi
fi
for stage in ${STAGES:-clip prior sr256 sr1024 decoder}; do
  echo "== $stage ($(date -u +%FT%TZ))" | tee -a "$state/$stage.log"
  cascade train "$stage" --config "$config" --model "$state/model" --run "$state/run-$stage" --resume \
    ${MAX_MINUTES:+--max-minutes "$MAX_MINUTES"} 2>&1 | tee -a "$state/$stage.log"
done
python "$here/tools/export_model.py" "$state/model" "$here/cascade/weights/shapes" --fp16 --vocabulary shapeworld
