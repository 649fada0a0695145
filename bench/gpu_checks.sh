#!/usr/bin/env bash
# Everything this project measures or checks on a GPU, in one run of about 5 minutes on one H200-class GPU:
#   1. speed: the glimpse sensor against its per-image loop (the target: ≥ 20×), and the ViT's training step against
#      timm's and the cost of its attention maps (float32 and bfloat16 autocast);
#   2. every config whose data is found (and SE and ECA ResNets) trains 20 steps on the GPU and tests its checkpoint,
#      and the saliency CLI runs every method of each on the GPU: the device bugs the CPU test suite cannot see (a
#      tensor left on the CPU, an op with no deterministic CUDA kernel under `deterministic: true`);
#   3. the RAM's training speed on the GPU: configs/ram_mnist_60_cluttered.yaml for RAM_TIME, epochs and steps done.
#
#   bash bench/gpu_checks.sh OUT_DIR            # RAM_TIME=00:00:02:00 PYTHON=python3 by default
#
# OUT_DIR gets summary.txt and logs.tar.gz (every run's log and metrics.csv). Data is read as train.py reads it:
# data/FashionMNIST/raw and data/MNIST/raw (IDX files), then /usr/share/datasets/; CIFAR-10 configs without their
# data are listed as skipped.
set -u
out=${1:?usage: bash bench/gpu_checks.sh OUT_DIR}
python=${PYTHON:-python3}; ram_time=${RAM_TIME:-00:00:02:00}
mkdir -p "$out"; export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
logs=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$summary"
$python -c "import torch, lightning, timm, albumentations; print('torch', torch.__version__, 'lightning',
lightning.__version__, 'timm', timm.__version__, 'albumentations', albumentations.__version__, 'cuda',
torch.cuda.is_available())" 2>&1 | tee -a "$summary" || exit 1

echo "== 1. speed" | tee -a "$summary"
timeout 150 $python bench/bench_glimpse.py --device cuda --repeats 60 2>&1 | tee -a "$summary"
for autocast in float32 bfloat16; do
  timeout 75 $python bench/bench_vit.py --device cuda --warmup 5 --rounds 20 --batches 256 64 --autocast $autocast
done 2>&1 | tee -a "$summary"

echo "== 2. every config on the GPU: 20 training steps, the test, the saliency CLI" | tee -a "$summary"
smoke() {  # NAME CONFIG [more train.py arguments]
  local name=$1 config=$2; shift 2
  if ! OMP_NUM_THREADS=2 timeout 150 $python train.py --config "$config" --trainer.accelerator gpu \
      --trainer.max_epochs 1 --trainer.limit_train_batches 20 --trainer.limit_val_batches 5 \
      --trainer.limit_test_batches 5 --data.init_args.num_workers 2 --trainer.logger.init_args.save_dir "$logs" \
      --trainer.logger.init_args.name "$name" "$@" > "$logs/$name.log" 2>&1; then
    if grep -qE "CIFAR10DataModule: .* lacks" "$logs/$name.log"; then echo "skipped $name: no CIFAR-10 here"
    else echo "FAILED  $name, training:"; grep -E "Error|error" "$logs/$name.log" | tail -5; fi
    return
  fi
  local accuracy; accuracy=$(grep -oE "test/acc[^0-9]*[0-9.]+" "$logs/$name.log" | tail -1 | grep -oE "[0-9.]+$")
  # Every saliency method of the model on the GPU, from the checkpoint just trained (metrics where there are boxes).
  local run="$logs/$name/version_0"
  if timeout 150 $python -m cvattn.saliency --checkpoint "$(ls "$run"/checkpoints/epoch=*.ckpt | head -1)" \
      --config "$run/config.yaml" --out "$logs/saliency_$name" --device cuda --num-images 2 --max-batches 1 \
      --pixels-per-step 600 > "$logs/saliency_$name.log" 2>&1; then
    echo "ok      $name: test/acc $accuracy; saliency CLI: $($python -c "import json, sys;
print(' '.join(json.load(open(sys.argv[1]))['methods']) or 'figures of every method (no boxes, no metrics)')" \
      "$logs/saliency_$name/metrics.json")"
  else
    echo "FAILED  $name, saliency CLI (test/acc $accuracy):"; tail -5 "$logs/saliency_$name.log"
  fi
}
export -f smoke; export python logs
start=$(date +%s)
{ for config in configs/*.yaml; do echo "$(basename "$config" .yaml) $config"; done
  echo "se_resnet20_fashion_mnist configs/resnet20_fashion_mnist.yaml --model.init_args.model se_resnet20"
  echo "eca_resnet20_fashion_mnist configs/resnet20_fashion_mnist.yaml --model.init_args.model eca_resnet20"
} | xargs -P 5 -L 1 bash -c 'smoke "$@"' _ 2>&1 | sort -k2 | tee -a "$summary"
echo "configs and saliency: $(( $(date +%s) - start )) s" | tee -a "$summary"

echo "== 3. RAM training speed on the GPU, configs/ram_mnist_60_cluttered.yaml for $ram_time" | tee -a "$summary"
start=$(date +%s)
OMP_NUM_THREADS=2 $python train.py --config configs/ram_mnist_60_cluttered.yaml --trainer.accelerator gpu \
  --trainer.max_time "$ram_time" --data.init_args.num_workers 6 --trainer.logger.init_args.save_dir "$logs" \
  --trainer.logger.init_args.name ram_speed > "$logs/ram_speed.log" 2>&1
{ echo "$(( $(date +%s) - start )) s in all (fit, then test); last metrics.csv row (epoch, step first):" \
    "$(tail -1 "$logs"/ram_speed/version_0/metrics.csv | cut -d, -f1-2); $(grep -oE "[0-9.]+it/s" "$logs/ram_speed.log" \
    | tail -3 | tr '\n' ' ')"
  grep -E "test/|rror" "$logs/ram_speed.log"; } 2>&1 | tee -a "$summary"
tar czf "$out/logs.tar.gz" --exclude '*.ckpt' -C "$logs" .
ls -la "$out"
