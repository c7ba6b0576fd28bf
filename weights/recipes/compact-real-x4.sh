#!/usr/bin/env bash
# How compact-real-x4 is trained (issue 13): Real-ESRGAN x4plus distilled into the bundled compact architecture
# (4 blocks, 32 features, growth 16) on real-world degradations, starting from compact-x4. Every stage resumes:
# run the script again after an interruption and it continues where it stopped.
#
#   ESRGAN_SHARED=../shared RUN=runs/compact-real PSNR_ITERS=3000 GAN_ITERS=600 bash weights/recipes/compact-real-x4.sh
#
# Held out, never trained on: the first 20 BSD200 images by name (the real-world evaluation set below).
set -euo pipefail
SHARED=${ESRGAN_SHARED:-../shared}
RUN=${RUN:-runs/compact-real}
PSNR_ITERS=${PSNR_ITERS:-3000}
GAN_ITERS=${GAN_ITERS:-600}
TEACHER=$SHARED/weights/realesrgan-x4plus.fp16.safetensors
VGG=$SHARED/vgg/vgg19-imagenet-conv1_1-conv3_4.caffe-bgr.safetensors
HERE=$(cd "$(dirname "$0")/../.." && pwd)

mkdir -p "$RUN/data" "$RUN/heldout"
for f in "$SHARED"/trainsets/T91/*; do ln -sf "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$RUN/data/t91-$(basename "$f")"; done
i=0
for f in $(ls "$SHARED/trainsets/BSD200" | sort); do
  src="$(cd "$SHARED/trainsets/BSD200" && pwd)/$f"
  if [ $i -lt 20 ]; then ln -sf "$src" "$RUN/heldout/$f"; else ln -sf "$src" "$RUN/data/bsd-$f"; fi
  i=$((i + 1))
done

stage() {  # stage NAME ARGS...: start the run, or resume it when its folder already holds one
  local out=$RUN/$1; shift
  if [ -f "$out/state.pt" ]; then esrgan train --out "$out" --resume; else esrgan train --out "$out" "$@"; fi
}

# 1. Distillation, L1 to the teacher's output on the very same degraded patch (no GAN yet).
stage psnr --stage psnr --degradation real --teacher "$TEACHER" --teacher-cache "$RUN/teacher-cache" \
  --init "$HERE/weights/compact-x4.fp16.safetensors" --data "$RUN/data" --iters "$PSNR_ITERS" \
  --batch-size 8 --patch-size 96 --lr 2e-4 --warmup 100 --save-every 250 --val-every "$PSNR_ITERS" --seed 13

# 2. Short GAN stage: perceptual (conv3_4, the deepest layer the offline VGG19 has) + U-Net GAN + L1, still to the
#    teacher's output, for texture the L1 average smooths away.
stage gan --stage gan --degradation real --teacher "$TEACHER" --teacher-cache "$RUN/teacher-cache-gan" \
  --init "$RUN/psnr/model_${PSNR_ITERS}.safetensors" --data "$RUN/data" --iters "$GAN_ITERS" \
  --batch-size 8 --patch-size 96 --discriminator unet --perceptual-weights "$VGG" --perceptual-layer conv3_4 \
  --perceptual-weight 0.01 --save-every 100 --val-every "$GAN_ITERS" --seed 14

# 3. The real-world evaluation set and the scores (the model card's table). EVAL=0 skips it.
[ "${EVAL:-1}" = 1 ] || exit 0
for m in bicubic compact-x4 compact-psnr-x4 "$RUN/gan/model_${GAN_ITERS}.safetensors" "$TEACHER"; do
  esrgan eval "$m" --hr "$RUN/heldout" --degradation real --seed 2026 --perceptual-weights "$VGG" --json \
    > "$RUN/eval-$(basename "$m" .safetensors).json"
done
