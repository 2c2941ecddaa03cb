#!/usr/bin/env bash
# One command for the CIFAR-10 comparison: softmax U-ViT-S/2 vs Cog U-ViC-S/2, same seed, same steps,
# same data order, then FID/KID of both (EMA and raw weights) and the metric's floor (CIFAR-10 test split).
#
#   bash scripts/cifar10_comparison.sh DATA OUT [key=value ...]
#
# DATA: the CIFAR-10 ImageFolder copy (DATA/train/<class>/*.png, DATA/test/...). OUT: everything goes here
# (stats/, runs/{softmax,cog}/, logs/, compare_ema/, compare_raw/, test_split_fid.json, and the summary of it all
# in report/ from python -m cogdiff.report: summary.md, results.json, curves.png, samples.png). Extra key=value
# overrides go to both training runs. Environment (defaults in brackets): STEPS [20000], SEED [0],
# FID_EVERY [2500], FID_N [2000] (FID during training), N_FINAL [10000] (final FID), PYTHON [python3],
# COMMIT (the code's commit for the report, where the checkout has no .git).
# With two or more GPUs visible the two models train at the same time, one per GPU (and the EMA and raw
# evaluations run side by side); with one GPU or none, one after the other. Re-running the same command
# continues: training resumes from the latest checkpoint (train.resume=latest), the reference statistics
# are reused, and evaluations made for the same STEPS, N_FINAL and SEED are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: bash scripts/cifar10_comparison.sh DATA OUT [key=value ...]  (DATA holds train/ and test/ of CIFAR-10)" >&2
    exit 2
fi
DATA=$1 OUT=$2
shift 2
OVERRIDES=("$@")
[ -d "$DATA/train" ] || { echo "error: $DATA/train not found: pass the unpacked CIFAR-10 folder (tar xzf train-*.tar.gz)" >&2; exit 2; }
PY=${PYTHON:-python3}
STEPS=${STEPS:-20000} SEED=${SEED:-0} FID_EVERY=${FID_EVERY:-2500} FID_N=${FID_N:-2000} N_FINAL=${N_FINAL:-10000}
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
IFS=, read -r -a VISIBLE <<<"${CUDA_VISIBLE_DEVICES-}"  # job i gets the i-th visible GPU (or GPU i)
REF=$OUT/stats/cifar10_train.npz
mkdir -p "$OUT/logs" "$OUT/stats"
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

# run_jobs NAME ...: runs the shell functions NAME side by side, one GPU each, with >= 2 GPUs, else in turn;
# output to OUT/logs/NAME.log; fails if any fails.
run_jobs() {
    local pids=() names=() i=0 name
    for name in "$@"; do
        say "start $name -> $OUT/logs/$name.log"
        if [ "$NGPU" -ge 2 ]; then
            (export CUDA_VISIBLE_DEVICES="${VISIBLE[$i]:-$i}"; "$name") >"$OUT/logs/$name.log" 2>&1 &
            pids+=($!) names+=("$name")
        else
            "$name" >"$OUT/logs/$name.log" 2>&1 || { say "FAILED $name (see $OUT/logs/$name.log)"; return 1; }
        fi
        i=$((i + 1))
    done
    local failed=0 j
    for j in "${!pids[@]}"; do
        wait "${pids[$j]}" || { say "FAILED ${names[$j]} (see $OUT/logs/${names[$j]}.log)"; failed=1; }
    done
    return $failed
}

train_model() {  # NAME: configs/cifar10_uvit_s2_NAME.yaml -> OUT/runs/NAME (resumes from its latest checkpoint)
    "$PY" train.py --config "configs/cifar10_uvit_s2_$1.yaml" "data.path=$DATA" "train.steps=$STEPS" "train.seed=$SEED" \
        train.compile=true train.ema_warmup=true "train.fid_every=$FID_EVERY" "train.fid_num_images=$FID_N" \
        "train.fid_ref=$REF" train.checkpoint_every=5000 train.resume=latest "${OVERRIDES[@]}" "train.output_dir=$OUT/runs/$1"
}
train_softmax() { train_model softmax; }
train_cog() { train_model cog; }

# An evaluation is redone unless OUT/<dir>/done holds the same key (steps, N, seed) as now.
KEY="steps=$STEPS n=$N_FINAL seed=$SEED"
fresh() { [ -f "$OUT/$1/done" ] && [ "$(cat "$OUT/$1/done")" = "$KEY" ]; }
compare_pair() {  # DIR SUFFIX: FID/KID of both runs (SUFFIX @raw = raw weights) -> OUT/DIR, same seeds and sampler
    fresh "$1" && return 0
    "$PY" -m cogdiff.compare "$OUT/runs/softmax$2" "$OUT/runs/cog$2" --labels softmax,cog --out "$OUT/$1" --ref "$REF" \
        -n "$N_FINAL" --scheduler dpm++ --steps 50 --batch-size 500 --bf16 --grid-images 16 --no-progress \
        && echo "$KEY" >"$OUT/$1/done"
}
test_floor() {  # the metric's floor: the CIFAR-10 test images against the train statistics
    [ -f "$OUT/test_split_fid.json" ] && return 0
    "$PY" -m cogdiff.metrics calc "dataset:kind=cifar10,path=$DATA,split=test" --ref "$REF" --json "$OUT/test_split_fid.json" --no-progress
}
eval_ema() { compare_pair compare_ema "" && test_floor; }
eval_raw() { compare_pair compare_raw @raw; }

say "reference statistics: CIFAR-10 train ($REF)"
"$PY" -m cogdiff.metrics ref "dataset:kind=cifar10,path=$DATA,split=train" --out "$REF" --no-progress
say "training $STEPS steps each, seed $SEED, on $NGPU GPU(s)"
run_jobs train_softmax train_cog
say "evaluating: FID-$N_FINAL (DPM-Solver++ 50 steps) of EMA and raw weights; test-split floor"
run_jobs eval_ema eval_raw
printf -v CMD '%q ' bash scripts/cifar10_comparison.sh "$DATA" "$OUT" "${OVERRIDES[@]}"
"$PY" -m cogdiff.report "$OUT" --dest "$OUT/report" ${COMMIT:+--commit "$COMMIT"} \
    --command "STEPS=$STEPS SEED=$SEED FID_EVERY=$FID_EVERY FID_N=$FID_N N_FINAL=$N_FINAL ${CMD% }"
say "done: $OUT/report/summary.md (results.json, curves.png, samples.png beside it)"
