#!/usr/bin/env bash
# Everything this project measures on a GPU, in one run of under 10 minutes on one H200-class GPU:
#   1. the speed benchmarks on CUDA: ViT train step against timm and the cost of the attention maps (float32 and
#      bfloat16 autocast, batches sized for a GPU and the CPU defaults), the glimpse sensor against its loop;
#   2. ViT trainings on Fashion-MNIST side by side (one 0.8M-parameter ViT leaves the GPU mostly idle, so three
#      runs at once take little longer than one): the config at seeds 0 and 1, and with the class token as input
#      of the head (global_pool: token) instead of the mean of the patch tokens. Each stops at MAX_TIME if
#      unfinished and then tests its best checkpoint; its cosine schedule is then cut short, as "epochs done" shows.
#
#   bash bench/gpu_checks.sh OUT_DIR            # EPOCHS=100 MAX_TIME=00:00:07:15 PYTHON=python3 by default
#
# OUT_DIR gets summary.txt (benchmarks, then each run's test metrics), runs.tar.gz (each run's log, config and
# metrics.csv) and the first run's best checkpoint. Fashion-MNIST is read as train.py reads it
# (data/, then /usr/share/datasets/fashion-mnist).
set -u
out=${1:?usage: bash bench/gpu_checks.sh OUT_DIR}
python=${PYTHON:-python3}; epochs=${EPOCHS:-100}; max_time=${MAX_TIME:-00:00:07:15}
mkdir -p "$out"; export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$summary"
$python -c "import torch, lightning, timm, albumentations; print('torch', torch.__version__, 'lightning',
lightning.__version__, 'timm', timm.__version__, 'albumentations', albumentations.__version__, 'cuda',
torch.cuda.is_available())" 2>&1 | tee -a "$summary" || exit 1

for autocast in float32 bfloat16; do
  timeout 90 $python bench/bench_vit.py --device cuda --warmup 5 --rounds 30 --batches 512 256 --autocast $autocast
  timeout 60 $python bench/bench_vit.py --device cuda --warmup 5 --rounds 30 --autocast $autocast
done 2>&1 | tee -a "$summary"
timeout 120 $python bench/bench_glimpse.py --device cuda --repeats 60 2>&1 | tee -a "$summary"

model='embed_dim: 128, depth: 6, num_heads: 4, mlp_ratio: 2.0'
logs=$(mktemp -d)
train() {  # NAME, then arguments added to the config's
  local name=$1; shift
  OMP_NUM_THREADS=2 $python train.py --config configs/vit_fashion_mnist.yaml --trainer.accelerator gpu \
    --trainer.max_epochs "$epochs" --trainer.max_time "$max_time" --data.init_args.num_workers 3 \
    --trainer.logger.init_args.save_dir "$logs" --trainer.logger.init_args.name "$name" "$@" > "$logs/$name.log" 2>&1
}
start=$(date +%s)
train vit_seed0 &
train vit_seed1 --seed_everything 1 &
train vit_token_seed0 --model.init_args.model_kwargs "{$model, global_pool: token}" &
wait
echo "trainings: $(( $(date +%s) - start )) s" | tee -a "$summary"
for name in vit_seed0 vit_seed1 vit_token_seed0; do
  echo "== $name: epochs done $(tail -1 "$logs/$name"/version_0/metrics.csv | cut -d, -f1)"
  grep -E "test/|rror" "$logs/$name.log"
done 2>&1 | tee -a "$summary"
tar czf "$out/runs.tar.gz" --exclude '*.ckpt' -C "$logs" .
best=$(ls "$logs"/vit_seed0/version_0/checkpoints/epoch=*.ckpt 2>/dev/null | head -1)
[ -n "$best" ] && cp "$best" "$out/vit_seed0_best.ckpt"
ls -la "$out"
