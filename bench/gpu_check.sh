#!/usr/bin/env bash
# One call on a fresh GPU machine (an H100/H200 lent for minutes): install remn, run the
# CUDA tests, the kernel microbenchmarks, the end-to-end, 1080p and memory sections and the
# fast path's routes on CUDA, and write everything into one folder, in under 8 minutes. A
# session that is lent a GPU runs this first and commits the folder.
#
#   bash bench/gpu_check.sh [--archive FILE.tar.gz] [--output DIR] [--budget SECONDS]
#   bash bench/gpu_check.sh --dry-run      # the same steps on a CPU, CPU-sized: a few seconds (CI)
#
# On the project's device tool:  bash bench/gpu_check.sh --archive "$OUT/gpu_check.tar.gz"
# (only a few files come back from $OUT, so the folder travels as one archive).
#
# Every step runs under `timeout` with its own share of the budget, its output in
# STEP.log, and its status, exit code and seconds in steps.tsv; a failing or timed-out
# step does not stop the later ones. The benchmark sections each run in their own
# `bench/run.py` call merged into one JSON (cuda-gpu-check.json), so a section cut short
# loses only itself. Nothing needs the network: remn installs with --no-deps
# --no-build-isolation against the machine's torch/triton; wheels in .whl/ (if any) are
# installed first, offline.
set -uo pipefail

DRY_RUN=0
ARCHIVE=""
OUTPUT=""
BUDGET=470  # seconds for all steps: 8 minutes less the machine's own start-up margin
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --archive) ARCHIVE="$2"; shift ;;
        --output) OUTPUT="$2"; shift ;;
        --budget) BUDGET="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
PY="${PYTHON:-python3}"
STAMP="$(date -u +%Y-%m-%dT%H%M%SZ)"
OUT_DIR="${OUTPUT:-bench/results/gpu-check-$STAMP}"
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
STARTED=$(date +%s)
printf 'step\tstatus\texit_code\tseconds\tcommand\n' > "$OUT_DIR/steps.tsv"
export PYTHONUNBUFFERED=1

if [ "$DRY_RUN" = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # a CPU run, even on a machine with a GPU
    export TRITON_INTERPRET=1
fi

# step NAME SECONDS COMMAND...: run COMMAND with at most SECONDS (and what is left of the budget).
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$(( BUDGET - ($(date +%s) - STARTED) ))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -le 0 ]; then
        printf '%s\tskipped (budget spent)\t-\t0\t%s\n' "$name" "$*" >> "$OUT_DIR/steps.tsv"
        echo "[gpu_check] $name: skipped, the budget is spent" >&2
        return
    fi
    echo "[gpu_check] $name (at most ${limit}s): $*" >&2
    local begun=$(date +%s)
    timeout --kill-after=5 "$limit" bash -c '"$@"' "$name" "$@" > "$OUT_DIR/$name.log" 2>&1  # bash: runs this file's functions too
    local code=$?
    local status=ok
    [ "$code" -ne 0 ] && status=failed
    [ "$code" -eq 124 ] || [ "$code" -eq 137 ] && status="timed out"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$code" "$(( $(date +%s) - begun ))" "$*" >> "$OUT_DIR/steps.tsv"
    echo "[gpu_check] $name: $status ($code)" >&2
}

environment() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | wc -l) changed paths"
    echo "dry run: $DRY_RUN"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import platform, os, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
print("cuda available:", torch.cuda.is_available(), "| TRITON_INTERPRET:", os.environ.get("TRITON_INTERPRET"))
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("cpu capability:", torch.backends.cpu.get_cpu_capability(), "| cores:", os.cpu_count())
EOF
}

install() {
    if [ "$DRY_RUN" = 1 ]; then  # CI's environment is already installed: check it, change nothing
        "$PY" -m pip --version && "$PY" -c "import remn, remn.kernels; print('remn', remn.__file__)"
        return
    fi
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || return 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || return 1
    "$PY" -c "import remn, remn.kernels; print('remn', remn.__file__)"
}

bench() {  # bench SECTION...: one bench/run.py call merged into the check's one JSON
    if [ "$DRY_RUN" = 1 ]; then
        "$PY" bench/run.py --quick --device cpu --repeats 1 --output "$OUT_DIR" --tag cpu-gpu-check-dry-run --merge \
            --sections "$@"
    else
        "$PY" bench/run.py --output "$OUT_DIR" --tag cuda-gpu-check --merge --sections "$@"
    fi
}

sections_exist() {  # the dry run's stand-in for a section too slow for CI: its name must be one bench/run.py runs
    "$PY" - "$@" <<'EOF'
import sys
sys.path.insert(0, "bench")
import run
unknown = sorted(set(sys.argv[1:]) - set(run.SECTIONS))
sys.exit(f"unknown bench sections: {unknown}" if unknown else 0)
EOF
}

export DRY_RUN OUT_DIR PY
export -f environment install bench sections_exist
step environment 30 environment
step install 60 install
if [ "$DRY_RUN" = 1 ]; then
    step tests 60 "$PY" -m pytest -q --collect-only tests/test_memory_read.py tests/test_local_attention.py
    step kernels 60 bench memory_read
    step end_to_end 30 sections_exist end_to_end
    step high_resolution_memory 30 sections_exist high_resolution memory_growth
    step cuda_fast_path 60 bench cuda_fast_path
else
    # The whole suite: the CUDA-only cases (real sizes, bf16, no host sync in a step) run here.
    workers=()
    "$PY" -c "import xdist" 2>/dev/null && workers=(-n 8)  # pytest-xdist, where the image has it
    step tests 170 "$PY" -m pytest -q -p no:cacheprovider "${workers[@]}" --junitxml="$OUT_DIR/tests.xml" tests
    step kernels 110 bench memory_read local_attention
    step end_to_end 100 bench end_to_end
    step high_resolution_memory 70 bench high_resolution memory_growth
    # Last, with what the budget has left: the fast path's routes on CUDA, torch.compile's
    # CUDA graphs included (their compile falls in the untimed pass).
    step cuda_fast_path 100 bench cuda_fast_path
fi

{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), dry run: $DRY_RUN, $(( $(date +%s) - STARTED ))s"
    echo
    column -t -s $'\t' "$OUT_DIR/steps.tsv" 2>/dev/null || cat "$OUT_DIR/steps.tsv"
} > "$OUT_DIR/summary.txt"
cat "$OUT_DIR/summary.txt" >&2

if [ -n "$ARCHIVE" ]; then
    tar -czf "$ARCHIVE" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")" && echo "[gpu_check] archive: $ARCHIVE" >&2
fi
echo "[gpu_check] results: $OUT_DIR" >&2
# The exit code says whether every step passed.
! cut -f2 "$OUT_DIR/steps.tsv" | tail -n +2 | grep -qv '^ok$'
