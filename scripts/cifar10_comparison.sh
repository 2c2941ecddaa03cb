#!/usr/bin/env bash
# One command for the CIFAR-10 comparison: softmax U-ViT-S/2 vs Cog U-ViC-S/2, same seed, same steps, same data
# order, then FID/KID of both (EMA and raw weights) and the metric's floor (CIFAR-10 test split). It is the two-arm
# study configs/studies/cifar10_2arm.yaml run by python -m cogdiff.study (edit that file for steps, N, seeds, arms).
#
#   bash scripts/cifar10_comparison.sh DATA OUT [key=value ...]
#
# DATA: the CIFAR-10 ImageFolder copy (DATA/train/<class>/*.png, DATA/test/...). OUT: stats/ref.npz, floor.json,
# runs/<arm>/seed<s>/ (training run + eval/), logs/, report/ (summary.md, results.json, plots, samples.png).
# With two or more GPUs visible the two models train at the same time, one per GPU; otherwise one after the other.
# Re-running the same command continues: interrupted runs resume, finished runs and evaluations are kept.
# Extra key=value overrides go to both training runs. Environment (default: the study file's value): STEPS,
# FID_EVERY, FID_N (FID during training), N_FINAL (final FID), PYTHON [python3]. Seeds and arms: in the study file.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: bash scripts/cifar10_comparison.sh DATA OUT [key=value ...]  (DATA holds train/ and test/ of CIFAR-10)" >&2
    exit 2
fi
[ -d "$1/train" ] || { echo "error: $1/train not found: pass the unpacked CIFAR-10 folder (tar xzf train-*.tar.gz)" >&2; exit 2; }
DATA=$1 OUTDIR=$2
shift 2
P=()
for kv in steps=${STEPS-} fid_every=${FID_EVERY-} fid_n=${FID_N-} final_n=${N_FINAL-}; do
    [ -n "${kv#*=}" ] && P+=(--protocol "$kv")
done
exec "${PYTHON:-python3}" -m cogdiff.study run configs/studies/cifar10_2arm.yaml --data "$DATA" --out "$OUTDIR" \
    ${P[@]+"${P[@]}"} "$@"
