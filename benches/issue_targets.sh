#!/usr/bin/env bash
# The open issues' target figures in one GPU-machine call, each with the command benches/RESULTS.md
# records for it: 13 (quantized decode), 14 (many streams), 15 (prefill); any of them, all by default;
# `conformance` first runs the conformance suite on the device's vulkan and wgpu (~1 min with xdist).
#
# Prepare here (the GPU machine has no internet; it lacks gguf and pydantic, which the benches import,
# and pytest-xdist):
#   ../shared/tools/device-prep gguf==0.19.0 pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 \
#       typing-inspection==0.4.2 typing_extensions==4.16.0 pytest-xdist==3.8.0 execnet==2.1.2
# then run there with the device tool (carry [".gl", ".whl"]; one call may take 600 s, all three ~400 s):
#   source .gl/device-env && bash benches/issue_targets.sh conformance 13 14 15
# Each bench's table goes to stdout and to $OUT/summary.txt (./targets-out without OUT); the runs' JSON,
# logs and clock samples to $OUT/runs.tar.gz (the device tool brings back at most 8 files).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-targets-out}
mkdir -p "$out/runs"
python3 -m pip install -q --no-deps --no-index .whl/*.whl
python3 -m pip install -q --no-deps --no-build-isolation -e .

bench() {  # bench NAME ARGS...: one `shaderbay bench` run, its summary printed, and the clocks during it
    local name=$1
    shift
    echo "=== $name: python3 -m shaderbay.benches $*"
    # the clocks a run's figures were taken at: the H100/H200 rest at 345 MHz and need ~1 s of work to
    # climb; a memory clock below its maximum cuts the copy bandwidth (H100s seen at 1.3 TB/s and 2.7)
    nvidia-smi --query-gpu=clocks.sm,clocks.mem --format=csv,noheader,nounits -lms 200 >"$out/runs/$name.clocks" 2>/dev/null &
    local sampler=$!
    timeout 240 python3 -m shaderbay.benches --time-budget 3 --repeats "${REPEATS:-2}" --in-memory --no-preflight \
        --json "$out/runs/$name.json" "$@" >"$out/runs/$name.log" 2>&1
    echo "(exit $?)"
    kill "$sampler" 2>/dev/null
    for c in 1 2; do
        cut -d, -f$c "$out/runs/$name.clocks" | sort -n | awk -v what="$([ $c = 1 ] && echo SM || echo memory)" \
            '{v[NR] = $1} END {if (NR) printf "%s clock MHz over the run: min %d, median %d, max %d (%d samples)\n", what, v[1], v[int((NR + 1) / 2)], v[NR], NR}'
    done
    grep -v '^\s*$' "$out/runs/$name.log" | tail -30
}

main() {
    nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,temperature.gpu --format=csv
    # whether wgpu's adapter offers its experimental cooperative matrices here (8 x 8 float32 only)
    python3 -c "import wgpu; a = wgpu.gpu.request_adapter_sync(power_preference='high-performance'); \
    print('wgpu adapter:', a.info['device'], '| cooperative-matrix:', 'cooperative-matrix' in a.features)"

    [ $# -gt 0 ] || set -- 13 14 15
    for issue in "$@"; do
        case $issue in
        conformance)  # the suite on the device's GPU backends (tensor-core forms included), its summary
            echo "=== conformance: python3 -m pytest -q -n 8 --pyargs shaderbay.conformance --backend vulkan,wgpu"
            SHADERBAY_VULKAN_VALIDATE=0 timeout 300 python3 -m pytest -q -n 8 -p no:cacheprovider \
                --pyargs shaderbay.conformance --backend vulkan,wgpu >"$out/runs/conformance.log" 2>&1
            echo "(exit $?)"
            grep -E "^(FAILED|ERROR)|passed|failed" "$out/runs/conformance.log" | tail -12
            ;;
        13)  # quantized decode, vulkan (1B q4_0 beside wgpu), and the f16 prefill the q4_0 one is held to
            bench 1b-q4_0 --synthetic llama-3.2-1b --dtype q4_0 --backend vulkan,wgpu
            for d in q8_0 q4_k_m float16; do bench "1b-$d" --synthetic llama-3.2-1b --dtype "$d" --backend vulkan; done
            for d in q4_0 q4_1; do bench "135m-$d" --synthetic smollm2-135m --dtype "$d" --backend vulkan; done
            ;;
        14)  # streams at 128-token prompts and 128 new tokens each; one stream after 4,000 tokens
            for s in smollm2-135m llama-3.2-1b; do
                REPEATS=1 bench "$s-streams" --synthetic "$s" --backend vulkan,wgpu --streams 1,16,64 \
                    --prompt-tokens 128 --new-tokens 128
            done
            bench 1b-4k --synthetic llama-3.2-1b --backend vulkan --prompt-tokens 4000 --new-tokens 64
            ;;
        15)  # prefill of 512, vulkan beside wgpu (the 4,000-token first token is 14's 1b-4k run)
            for s in smollm2-135m llama-3.2-1b; do
                bench "$s-prefill" --synthetic "$s" --backend vulkan,wgpu --new-tokens 16
            done
            ;;
        *) echo "unknown issue $issue (conformance, 13, 14 or 15)" >&2 ;;
        esac
    done
}

main "$@" 2>&1 | tee "$out/summary.txt"
tar -czf "$out/runs.tar.gz" -C "$out" runs && rm -r "$out/runs"
