#!/usr/bin/env bash
# Runs THERE: on a lent GPU machine, from the repo root, with .gpu_wheels/ carried. First, here:
#   bash benchmarks/gpu/prepare_wheels.sh
# then one device call:
#   run(command="bash benchmarks/gpu/run_on_gpu.sh", carry=[".gpu_wheels"], timeout_s=540)
# A second try can name the steps to redo: command="STEPS='install build decode' bash benchmarks/gpu/run_on_gpu.sh".
#
# What it does, each step under `timeout`, the whole within BUDGET_S seconds (a step that would start past it is
# skipped and listed as such):
#   install       the carried wheels (trl, datasets, dill, multiprocess) into /tmp/site, then rs_trainer itself with
#                 `pip install --no-deps --no-build-isolation -e .`: pyproject's ranges admit this machine's
#                 transformers 5.17, but pip cannot resolve the rest (bitsandbytes, gguf, tensorboard, ...: no
#                 network), so it must not try; then checks that the imports of a run work
#   env           GPU, driver and package versions
#   peaks         HBM bandwidth (device-to-device copy) and bf16 matmul rate: what rooflines and MFU divide by
#   build         random-weight models in a public shape (SHAPE: llama-3.2-1b or qwen2.5-1.5b), policy and reward model
#   round_*       one rejection-sampling round per accelerate config, LoRA on and off, on the default recipe with the
#                 random model (bf16); each must reach round_0/metrics.json and a checkpoint that loads
#                 (check_round.py). single_gpu.yaml, then fsdp2.yaml with one process. ddp.yaml needs 2+ GPUs and
#                 zero3.yaml needs deepspeed, which has no wheel: neither runs on this one-GPU machine
#   decode        generation tokens/s of our engine, model.generate and generate_batch, against the decode roofline
#   sft           SFT step tokens/s and MFU, LoRA and full, at 512 tokens
#   reward_model  reward-model scoring, length-sorted batches against arrival order
# Results: $OUT/results.json, $OUT/benchmarks_gpu.md (the lines for BENCHMARKS.md) and $OUT/run_on_gpu.log.
#
# SMOKE=1 runs every step at tiny sizes on this CPU (no installs, the venv's python, accelerate_configs/cpu.yaml,
# no FSDP): it checks the script, the commands and the output format, not the GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
export SMOKE=${SMOKE:-0}
export WORK=${WORK:-/tmp/rs_gpu}
export OUT=${OUT:-$WORK/out}
export SHAPE=${SHAPE:-llama-3.2-1b}
BUDGET_S=${BUDGET_S:-480}
if [ "$SMOKE" = 1 ]; then
    export PY=${PY:-.venv/bin/python} FLAG=--smoke MODELS_SUFFIX=-tiny ROUND_CONFIG=accelerate_configs/cpu.yaml
    export ROUND_SIZES="--prompts_per_round 8 --num_generations 2 --max_completion_length 8 --task_num_eval 4
        --eval_max_new_tokens 8 --kl_samples 8"
    STEPS=${STEPS:-"install env peaks build round_single_lora round_single_full decode sft reward_model"}
else
    export PY=${PY:-python3} FLAG= MODELS_SUFFIX= ROUND_CONFIG=accelerate_configs/single_gpu.yaml
    export ROUND_SIZES="--prompts_per_round 128 --num_generations 8 --max_completion_length 128 --task_num_eval 64
        --eval_max_new_tokens 64"
    STEPS=${STEPS:-"install env peaks build round_single_lora round_single_full decode sft reward_model
        round_fsdp2_lora round_fsdp2_full"}
fi
export POLICY=$WORK/models/$SHAPE$MODELS_SUFFIX/policy REWARD_MODEL=$WORK/models/$SHAPE$MODELS_SUFFIX/reward_model
export PARTS=$WORK/parts
export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$PARTS" "$WORK/runs"
mkdir -p "$OUT" "$PARTS" "$WORK/runs"
: > "$WORK/steps.tsv"
exec > >(tee -a "$OUT/run_on_gpu.log") 2>&1

do_install() {
    "$PY" -m pip --version
    if [ "$SMOKE" != 1 ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .gpu_wheels/wheels/*.whl || return 1
        # --no-deps: there is no network to resolve the other dependencies from; PYTHONPATH has the repo
        # anyway, so a failed editable install is reported and not fatal.
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || echo "editable install failed"
    fi
    "$PY" -c "
import datasets, trl, rs_trainer
from trl import ModelConfig, TrlParser, get_peft_config
import rs_trainer.trainer, rs_trainer.cli
print('imports ok: rs_trainer', rs_trainer.__file__, '| trl', trl.__version__, '| datasets', datasets.__version__)"
}

do_env() {
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -m pip list 2> /dev/null | grep -iE '^(torch|transformers|accelerate|peft|trl|datasets|pyarrow|fsspec|dill|multiprocess|huggingface.hub|tokenizers|safetensors|numpy) '
    cat .gpu_wheels/SOURCE 2> /dev/null || true
}

do_build() {
    "$PY" benchmarks/gpu/build_models.py --tokenizer .gpu_wheels/tokenizer --out "$WORK/models" --shape "$SHAPE" \
        --reward_model $FLAG
}

do_round() {  # NAME ACCELERATE_CONFIG USE_PEFT [extra launch options]
    local name=$1 config=$2 peft=$3 start=$SECONDS
    shift 3
    local lora=()
    [ "$peft" = false ] && lora=(--use_peft false --learning_rate 1e-5)
    # shellcheck disable=SC2086
    "$PY" -m accelerate.commands.launch --config_file "$config" "$@" -m rs_trainer \
        --config recipes/smollm2/arithmetic_lora.yaml --model_name_or_path "$POLICY" --dtype bfloat16 \
        --output_dir "$WORK/runs/$name" --num_rounds 1 --temperature 0.8 --min_reward -1 --drop_truncated false \
        --report_to none $ROUND_SIZES "${lora[@]}"
    local code=$?
    "$PY" benchmarks/gpu/check_round.py --run "$WORK/runs/$name" --base "$POLICY" --name "$name" \
        --config "$config" --seconds $((SECONDS - start)) --out "$PARTS" || return 1
    return $code
}

do_round_single_lora() { do_round single_gpu-lora "$ROUND_CONFIG" true; }
do_round_single_full() { do_round single_gpu-full "$ROUND_CONFIG" false; }
do_round_fsdp2_lora() { do_round fsdp2-1gpu-lora accelerate_configs/fsdp2.yaml true --num_processes 1; }
do_round_fsdp2_full() { do_round fsdp2-1gpu-full accelerate_configs/fsdp2.yaml false --num_processes 1; }
do_peaks() { "$PY" benchmarks/gpu/peaks.py --out "$PARTS" $FLAG; }
do_decode() {
    "$PY" benchmarks/gpu/bench_decode.py --model "$POLICY" --peaks "$PARTS/peaks.json" --out "$PARTS" \
        --max_seconds 30 $FLAG
}
do_sft() { "$PY" benchmarks/gpu/bench_sft_mfu.py --model "$POLICY" --peaks "$PARTS/peaks.json" --out "$PARTS" $FLAG; }
do_reward_model() { "$PY" benchmarks/gpu/bench_rm.py --model "$REWARD_MODEL" --out "$PARTS" $FLAG; }
export -f do_install do_env do_build do_round do_round_single_lora do_round_single_full do_round_fsdp2_lora \
    do_round_fsdp2_full do_peaks do_decode do_sft do_reward_model

step() {  # NAME TIMEOUT_S: runs do_NAME when STEPS names it, within what is left of BUDGET_S
    local name=$1 limit=$2 left=$((BUDGET_S - SECONDS)) start=$SECONDS code
    case " $(echo $STEPS) " in *" $name "*) ;; *) return 0 ;; esac
    if [ "$left" -lt 20 ]; then
        echo "=== $name: skipped, ${SECONDS}s of the ${BUDGET_S}s budget used"
        printf '%s\tskipped\t0\n' "$name" >> "$WORK/steps.tsv"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (at most ${limit}s; ${SECONDS}s used)"
    timeout -k 10 "$limit" bash -c "do_$name"
    code=$?
    [ "$code" = 124 ] && echo "=== $name: timed out after ${limit}s"
    echo "=== $name: exit $code in $((SECONDS - start))s"
    printf '%s\t%s\t%s\n' "$name" "$code" "$((SECONDS - start))" >> "$WORK/steps.tsv"
    return 0
}

step install 120
step env 30
step peaks 60
step build 120
step round_single_lora 240
step round_single_full 240
step decode 300
step sft 180
step reward_model 150
step round_fsdp2_lora 240
step round_fsdp2_full 240
"$PY" benchmarks/gpu/summarize.py --parts "$PARTS" --steps "$WORK/steps.tsv" --source .gpu_wheels/SOURCE --out "$OUT"
echo "=== done in ${SECONDS}s; results in $OUT"
