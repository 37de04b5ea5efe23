#!/usr/bin/env bash
# Write the shipped model's evaluation into docs/eval/ (what docs/eval/README.md summarises):
#
#   tools/eval_shipped.sh [OUT]        (default docs/eval; MODEL=DIR evaluates another model)
#
# Every run is seeded (seed 0), so a rerun on the same weights writes the same numbers (the
# wall times differ). About 75 minutes on a 2-core CPU with native bf16 (AVX-512 bf16; main alone takes
# 37, its decoder drawing 4 candidates) and budget's two decoder runs on top (6 min at 50 steps alone;
# the 250-step run took 57 min in session 14 with other jobs on the cores); parts can be run
# alone: PARTS="main size-1024" tools/eval_shipped.sh
set -euo pipefail
out=${1:-docs/eval}
model=${MODEL:+--model $MODEL}
folder=$(mktemp -d)
trap 'rm -rf "$folder"' EXIT
for part in ${PARTS:-main size-1024 budget steps-decoder steps-prior steps-sr256 steps-sr1024 folder}; do
  echo "== $part ($(date -u +%FT%TZ))"
  case $part in
    # text → 64 px for 300 canonical captions (200 single objects, a third of them held-out pairs; 100 two-object
    # relations), variations, CLIP retrieval, the prior, and the decoder's guidance trade-off
    main) cascade eval $model --n 300 --size 64 --parts judge,variations,retrieval,prior --sweep guidance \
            --sweep-n 50 --out "$out/main" --quiet ;;
    # every stage's output judged up to 1024 px, and each SR stage from true renders against bicubic
    size-1024) cascade eval $model --n 48 --size 1024 --parts judge,super_resolution --out "$out/size-1024" --quiet ;;
    # steps × sampler for the decoder and for the prior (judged at 64 px; each prior point runs the decoder
    # at its default 50 steps, hence fewer samplers there)
    steps-decoder) cascade eval $model --n 24 --size 64 --parts prior --sweep steps --sweep-stages decoder \
                     --sweep-values 5,10,25,50 --sweep-samplers ddim,dpmpp_2m,heun,ddpm --out "$out/steps-decoder" --quiet ;;
    steps-prior) cascade eval $model --n 24 --size 64 --parts prior --sweep steps --sweep-stages prior \
                   --sweep-values 5,10,25,50 --sweep-samplers ddim,dpmpp_2m --out "$out/steps-prior" --quiet ;;
    # steps × sampler for the SR stages (PSNR, SSIM and judge from true low-resolution renders)
    steps-sr256) cascade eval $model --n 24 --size 256 --parts super_resolution --sweep steps --sweep-stages sr256 \
                   --sweep-values 2,4,8,16 --sweep-samplers ddim,dpmpp_2m,heun --out "$out/steps-sr256" --quiet ;;
    steps-sr1024) cascade eval $model --n 8 --size 1024 --parts super_resolution --sweep steps --sweep-stages sr1024 \
                    --sweep-values 2,4,8 --sweep-samplers ddim,dpmpp_2m --out "$out/steps-sr1024" --quiet ;;
    # the paper-style step budget (decoder DDPM 250, SR-256 27, SR-1024 15 steps) against the defaults: the
    # judge at 64 px on main's 300 captions at 250 and at the default 50 decoder steps, both with one decoder
    # candidate (the steps alone differ; same seed, so the prompts pair up: tools/paired.py), and each SR
    # stage from true renders on size-1024's 16 scenes (n 48, of which the SR part takes a third; compare
    # with size-1024's super-resolution table)
    budget) cascade eval $model --n 300 --size 64 --parts judge --candidates 1 --out "$out/budget-decoder-50" --quiet
            cascade eval $model --n 300 --size 64 --parts judge --candidates 1 --steps decoder=250 \
              --out "$out/budget-decoder" --quiet
            python "$(dirname "$0")/paired.py" "$out/budget-decoder-50/report.json" "$out/budget-decoder/report.json"
            cascade eval $model --n 48 --size 1024 --parts super_resolution --steps sr256=27 --steps sr1024=15 \
              --out "$out/budget-sr" --quiet ;;
    # the folder suite on an image–caption folder written by `cascade shapeworld`
    folder) cascade shapeworld "$folder/pairs" --n 100 --size 256 --seed 1 >/dev/null
            cascade eval $model --data "$folder/pairs" --n 100 --size 256 --out "$out/folder" --quiet ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
