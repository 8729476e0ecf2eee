#!/usr/bin/env bash
# Runs HERE (the development machine, which reaches PyPI), before a GPU machine is asked for: fills .gpu_wheels/
# (git-ignored) with what benchmarks/gpu/run_on_gpu.sh needs on the GPU machine and cannot fetch there.
#
#   bash benchmarks/gpu/prepare_wheels.sh            # then: run(command="bash benchmarks/gpu/run_on_gpu.sh",
#                                                    #         carry=[".gpu_wheels"], timeout_s=540)
#   PYARROW_SIZE=1 bash benchmarks/gpu/prepare_wheels.sh   # also print the size of pyarrow's cp312 wheel
#
# The GPU machine has python 3.12, torch, transformers 5.17, accelerate, peft, pyarrow, pandas, xxhash, fsspec,
# huggingface-hub, tokenizers, psutil, pyyaml, tqdm, matplotlib and tensorboard (/work/.library/device/KINDS.md),
# and no network. rs_trainer needs trl at import (cli.parse_args: TrlParser) and `trl.get_peft_config`
# (trainer.setup) imports trl.trainer.utils, which imports datasets, which imports pyarrow. So the wheelhouse holds
# the pure-Python wheels of:
#   trl, datasets, and datasets' two needs the image lacks: dill and multiprocess (py312-none-any).
# Not carried: openai (imported only by the server and endpoint generators), gguf (embedded GGUF models only),
# math-verify (`math_answer` only), bitsandbytes (QLoRA only), deepspeed (no wheel: built from source).
# It also holds the SmolLM2 tokenizer (tokenizer.json, its config and chat template) that the random-weight models
# are built on, and SOURCE, the commit the tree came from.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEST=.gpu_wheels
LIMIT_MIB=64

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/tokenizer"
# The versions this checkout is tested with here (the venv's), as pure-Python wheels for CPython 3.12.
packages=()
for name in trl datasets dill multiprocess; do
    packages+=("$name==$(version "$name")")
done
echo "downloading ${packages[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$DEST/wheels" "${packages[@]}"
for wheel in "$DEST"/wheels/*.whl; do
    case "$wheel" in
        *-none-any.whl) ;;
        *) echo "prepare_wheels: $wheel is not pure Python; it would not install on another platform" >&2; exit 1 ;;
    esac
done

tokenizer=$("$PY" -c "from rs_trainer.run.models import resolve_model_path as r; print(r('embedded:SmolLM2-135M-Instruct'))")
for f in tokenizer.json tokenizer_config.json chat_template.jinja special_tokens_map.json; do
    if [ -f "$tokenizer/$f" ]; then cp "$tokenizer/$f" "$DEST/tokenizer/"; fi
done
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo " with uncommitted changes" || true)
echo "commit $(git rev-parse --short HEAD)$dirty, prepared $(date -u +%Y-%m-%d)" > "$DEST/SOURCE"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
carried=$(du -sb "$DEST" | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
echo
ls -l "$DEST/wheels" | awk 'NR > 1 { printf "  %-60s %8.2f MiB\n", $9, $5 / 1048576 }'
echo "wheelhouse $DEST: $(mib "$carried") MiB; working tree that travels: $(mib "$tree") MiB;" \
    "together $(mib $((carried + tree))) MiB of the $LIMIT_MIB MiB limit"
if [ $((carried + tree)) -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "prepare_wheels: over the $LIMIT_MIB MiB that can travel to the GPU machine" >&2
    exit 1
fi

if [ "${PYARROW_SIZE:-0}" = 1 ]; then
    # Not carried: the image has pyarrow. Its size says what carrying it would cost on an image without it.
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$tmp" "pyarrow==$(version pyarrow)"
    for wheel in "$tmp"/*.whl; do echo "$(basename "$wheel"): $(mib "$(stat -c %s "$wheel")") MiB (not carried)"; done
    rm -rf "$tmp"
fi
