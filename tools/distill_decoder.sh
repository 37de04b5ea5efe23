#!/usr/bin/env bash
# Teach the shipped decoder's predictions to a faster block layout, `num_res_blocks = [0, 2, 3]` with
# sub-pixel upsampling (1.5x fewer FLOPs; docs/shipped-model.md, sessions 17 and 18):
#
#   tools/distill_decoder.sh STATE_DIR
#
#   1. the student: tools/relayout_unet.py carries the shipped decoder's weights into the new layout
#      (or START=DIR, a decoder stage folder in that layout to start from instead, e.g. a committed
#      milestone: the plain phase is then skipped unless PLAIN_STEPS says otherwise);
#   2. plain distillation (the target is the teacher's v on the same x_t, t and condition) until
#      optimizer step PLAIN_STEPS (default 1200);
#   3. guided distillation (teacher_guidance 3: the guided predictions u + 3 (c - u) must match the
#      teacher's too; two passes of both networks per step) until step GUIDED_STEPS (default 6000).
#
# Resumable: run it again and each phase continues from its last checkpoint (`touch
# STATE_DIR/run-guided/STOP` stops with a checkpoint). MAX_MINUTES bounds each phase of this call.
# LAYOUT sets the student's blocks per level (default "[0, 2, 3]"; e.g. LAYOUT="[1, 2, 2]", which keeps a block at
# the 16² top level). LR_SCHEDULE=cosine anneals the guided phase's learning rate to 0 at GUIDED_STEPS (default: constant;
# on a resume the cosine picks up where its curve is at the resumed step).
# The student's EMA weights land in STATE_DIR/student/decoder at each checkpoint. Ship them only
# once `MODEL=STATE_DIR/student PARTS=main tools/eval_shipped.sh OUT` is within noise of
# docs/eval/main; then configs/shapes.toml's decoder takes the two layout lines of
# STATE_DIR/decoder-layout.toml and tools/export_model.py writes the folder.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
state=${1:?usage: tools/distill_decoder.sh STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd)
export CASCADE_EMBEDDING_CACHE=${CASCADE_EMBEDDING_CACHE:-$state/cache}
config=$state/decoder-layout.toml
python - "$here/configs/shapes.toml" "$config" "${LAYOUT:-[0, 2, 3]}" <<'EOF'
import sys
src = open(sys.argv[1]).read()
old = "num_res_blocks = 2\nattention_resolutions"
if old not in src:
    sys.exit(f"{sys.argv[1]}: the decoder's 'num_res_blocks = 2' line is not where this script expects it")
new = f"num_res_blocks = {sys.argv[3]}\nsubpixel_upsample = true\nattention_resolutions"
open(sys.argv[2], "w").write(src.replace(old, new, 1))
EOF
[ -d "$state/teacher" ] || cp -r "$here/cascade/weights/shapes" "$state/teacher"
if [ ! -d "$state/student" ]; then
  if [ -n "${START:-}" ]; then
    cp -r "$state/teacher" "$state/student.tmp"
    rm -r "$state/student.tmp/decoder"
    cp -r "$START" "$state/student.tmp/decoder"
  else
    python "$here/tools/relayout_unet.py" "$state/teacher" decoder --config "$config" --out "$state/student.tmp"
  fi
  mv "$state/student.tmp" "$state/student"
fi
common=(--config "$config" --model "$state/student" --resume --set "teacher=\"$state/teacher\""
        --set lr=1.5e-4 --set dataset_size=60000 ${MAX_MINUTES:+--max-minutes "$MAX_MINUTES"})
plain=${PLAIN_STEPS:-$([ -n "${START:-}" ] && echo 0 || echo 1200)}
if [ "$plain" -gt 0 ]; then
  echo "== plain distillation to step $plain ($(date -u +%FT%TZ))"
  cascade train decoder "${common[@]}" --run "$state/run-plain" --max-steps "$plain"
fi
echo "== guided distillation to step ${GUIDED_STEPS:-6000} ($(date -u +%FT%TZ))"
cascade train decoder "${common[@]}" --run "$state/run-guided" --set teacher_guidance=3.0 --set warmup_steps=100 \
  --set ema_decay=0.999 --set checkpoint_every=250 --set "lr_schedule=\"${LR_SCHEDULE:-constant}\"" --max-steps "${GUIDED_STEPS:-6000}"
