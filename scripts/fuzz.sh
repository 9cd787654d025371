#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (see docs/fuzzing.md), each for a bounded time,
# starting from the committed seed corpus. Fails on the first crash or failed property,
# naming the input libFuzzer saved.
#
#   scripts/fuzz.sh                      # every target, 20 s each (what CI runs)
#   scripts/fuzz.sh 600 canon_request    # one target, 10 minutes
#   FUZZ_JOBS=2 scripts/fuzz.sh 3600     # longer runs, one worker per core
#
# New inputs that libFuzzer finds go to a scratch corpus (fuzz/target/corpus/TARGET,
# kept between runs, git-ignored), never into the committed seeds.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(manifest_parse canon_request imds_validate pod_index_parse access_rules_parse access_rules_value calico_selector api_response_parse aks_cluster_parse decision_log cgroup_path aws_validate gcp_validate canon_cloud)
fi
# -jobs runs workers in the background, logging to fuzz-N.log; only when asked for.
parallel=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
    parallel=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

# cargo-fuzz passes nightly-only flags (-Z...) to rustc; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them. No sanitizer: imdsguard-core forbids unsafe code, so what
# fuzzing looks for is panics and failed properties, and ASan would only cost speed.
# Debug assertions (-a) turn integer overflow into a panic.
export RUSTC_BOOTSTRAP=1
flags=(--fuzz-dir fuzz -s none -a)

# The fuzz crate is a workspace of its own with its own Cargo.lock.
if ! cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null; then
    echo "fuzz/Cargo.lock is out of date (imdsguard-core's dependencies changed?): run" >&2
    echo "  cargo metadata --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null" >&2
    echo "and commit fuzz/Cargo.lock" >&2
    exit 1
fi

# The fuzz crate is outside the workspace, so `cargo fmt --all` does not see it.
rustfmt --edition 2024 --check fuzz/src/*.rs fuzz/fuzz_targets/*.rs

cargo fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
    scratch=fuzz/target/corpus/$t
    mkdir -p "$scratch"
    echo "fuzzing $t for ${seconds}s"
    # -max_len: manifests and rules files in the seeds are a few KB; -timeout: one input
    # taking over 10 s is a finding (e.g. quadratic parsing); -rss_limit_mb: so is 2 GB.
    if ! cargo fuzz run "${flags[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        "${parallel[@]}" -print_final_stats=1 >"fuzz/target/$t.log" 2>&1; then
        grep -E -A12 "panicked|ERROR: libFuzzer|SUMMARY" "fuzz/target/$t.log" | head -n 40 >&2 || true
        grep -E "Test unit written to" "fuzz/target/$t.log" >&2 || true
        echo "fuzz target $t failed (log: fuzz/target/$t.log); reproduce with" >&2
        echo "  RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t fuzz/artifacts/$t/<crash-file>" >&2
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units)" "fuzz/target/$t.log" | head -n 1 || true
done
