#!/usr/bin/env bash
# Several runs on one GPU: R runs stepped as one program (--replicas, step.jit_replicated_step)
# against R separate processes sharing the GPU, for the ResNet-18 CIFAR step at batch 256 in
# bfloat16 (part `steps`); and one CaSSLe run of CIFAR-100's preset end to end, 3 seeds in one
# program on synthetic CIFAR-100 for 2 epochs per task, its wall time split into training,
# evaluation and checkpointing and extrapolated to 500 epochs and the 36-run table (part `e2e`,
# experiments/end_to_end.py). Prints one table per part: images/s summed over the runs, ms per
# step, MFU; the seconds of the run.
#
#   experiments/gpu_bench.sh OUT_DIR [PARTS]     # PARTS: "steps e2e" (default), "steps", "e2e"
#
# On a lent GPU machine (no network), from the repository root, after
# ../shared/gpu/prepare-carry.sh here and with .whl carried:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && experiments/gpu_bench.sh $OUT
# About 8 minutes on an H100 for `steps` (each program compiles once), so that a device call of
# 10 minutes runs one part. CPU smoke test:
#   BACKBONE=resnet_tiny BATCH=16 DTYPE=float32 STEPS=2 REPLICAS=1,2 VMAP_REPLICAS=2 \
#     FEW_REPLICAS=1,2 PROCESSES=2 E2E_SEEDS=0,1 E2E_EPOCHS=1 E2E_FLAGS="--train_examples=1000 \
#     --config.eval.linear.epochs=2 --config.eval.train_examples=500" \
#     experiments/gpu_bench.sh /tmp/gpu_bench
set -euo pipefail
out=${1:?the output folder}
parts=${2:-steps e2e}
mkdir -p "$out"
common=(
  --backbone="${BACKBONE:-resnet18}" --batch_size="${BATCH:-256}" --dtype="${DTYPE:-bfloat16}"
  --steps="${STEPS:-30}" --warmup=3 --peer=false
)

if [[ " $parts " == *" steps "* ]]; then
  # Replicas in one program (--replica_program: each replica's step in turn, or one step mapped
  # over them): fine-tuning and CaSSLe at 1, 2 and 4 (vmap at 2 and 4: one replica is the same
  # program either way); Kaizen and CCL at 1 and 4.
  replicas() {  # PROGRAM STRATEGY REPLICAS [--set=...]
    python3 experiments/throughput.py "${common[@]}" --replica_program="$1" --strategy="$2" \
      --replicas="$3" "${@:4}" --output="$out/replicas_$2_$1.json" > "$out/replicas_$2_$1.log" 2>&1
  }
  for strategy in finetune cassle; do
    replicas loop $strategy "${REPLICAS:-1,2,4}"
    replicas vmap $strategy "${VMAP_REPLICAS:-2,4}"
  done
  replicas loop kaizen "${FEW_REPLICAS:-1,4}" --set=labels.fraction=1.0
  replicas loop ccl "${FEW_REPLICAS:-1,4}" --set=objective="'mocov2plus'"

  # The alternative: N fine-tuning processes sharing the GPU, their timed loops lined up.
  for n in ${PROCESSES:-2 4}; do
    barrier="$out/barrier_$n"
    rm -rf "$barrier"
    for i in $(seq 1 "$n"); do
      XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / $n, 3))") \
        python3 experiments/throughput.py "${common[@]}" --strategy=finetune \
        --barrier="$barrier:$n" --output="$out/processes_${n}_$i.json" \
        > "$out/processes_${n}_$i.log" 2>&1 &
    done
    wait
  done
fi

if [[ " $parts " == *" steps "* ]]; then
  python3 - "$out" <<'EOF'
import glob, json, os, sys

out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "replicas_*.json"))):
    result = json.load(open(path))
    for r in result.get("jax_replicas", [result["jax"]]):
        runs = f"{r['replicas']} in one program ({result['replica_program']})"
        rows.append((result["strategy"], runs, r["images_per_s"],
                     r["step_ms"], r.get("mfu")))
for n in sorted({int(p.split("_")[-2]) for p in glob.glob(os.path.join(out, "processes_*.json"))}):
    runs = [json.load(open(p))["jax"] for p in glob.glob(os.path.join(out, f"processes_{n}_*.json"))]
    rows.append(("finetune", f"{n} processes", sum(r["images_per_s"] for r in runs),
                 max(r["step_ms"] for r in runs), sum(r.get("mfu") or 0.0 for r in runs) or None))
device = json.load(open(glob.glob(os.path.join(out, "replicas_*.json"))[0]))["device"]
print(f"\n{device}\n| strategy | runs | images/s (sum) | ms/step | MFU |\n|---|---|---:|---:|---:|")
for strategy, runs, images, ms, mfu in rows:
    print(f"| {strategy} | {runs} | {images:,.0f} | {ms:.1f} | "
          f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} |")
EOF
fi

# One CaSSLe run end to end (SimCLR, the preset's online probe and offline evaluation).
if [[ " $parts " == *" e2e "* ]]; then
  # shellcheck disable=SC2086  # E2E_FLAGS: several flags
  python3 experiments/end_to_end.py --config=configs/cifar100.py:cassle \
    --config.model.backbone="${BACKBONE:-resnet18}" --config.batch_size="${BATCH:-256}" \
    --config.model.dtype="${DTYPE:-bfloat16}" --config.seeds="${E2E_SEEDS:-0,1,2}" \
    --config.progress_bar=false --epochs="${E2E_EPOCHS:-2}" ${E2E_FLAGS:-} \
    --workdir="$out/e2e" --output="$out/end_to_end.json" > "$out/end_to_end.log" 2>&1
  sed -n '/seed(s) in one program/,$p' "$out/end_to_end.log"
fi
