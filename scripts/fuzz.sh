#!/usr/bin/env bash
# Runs every fuzz target (docs/FUZZING.md) for SECONDS each, one after the other, niced.
#   ./scripts/fuzz.sh [SECONDS]          (default 60)
# Environment:
#   FUZZ_TARGETS="device uapi_get"   run only these targets
#   FUZZ_NICE=10                     niceness of the fuzzers (the machine is shared)
# Needs the nightly toolchain (cargo fuzz does; the project itself builds on stable) and
# installs it, and cargo-fuzz into target/tools (~/.cargo may be a read-only, shared toolchain),
# when they are missing. Every target is in one crate,
# tests/fuzz. The fuzzers' own corpus (what they find beyond the committed seeds in
# tests/fuzz/corpus/) and any crash artifacts are kept under target/fuzz/. A crash fails the
# script, printing the artifact and how to reproduce it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
nice_level=${FUZZ_NICE:-10}
export PATH="$HOME/.cargo/bin:$PATH"

all_targets=(device uapi_set uapi_get store_record policy_load)

case "$seconds" in
  '' | *[!0-9]*) echo "scripts/fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac

if ! command -v rustup >/dev/null; then
  echo "scripts/fuzz.sh: rustup is missing; cargo fuzz needs a nightly toolchain from it." >&2
  exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "== installing the nightly toolchain (cargo fuzz needs it; the project builds on stable)"
  rustup toolchain install nightly --profile minimal
fi
export PATH="$root/target/tools/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz into target/tools (cargo install cargo-fuzz --locked, about 1.5 minutes)"
  cargo install cargo-fuzz --locked --root "$root/target/tools"
fi

selected=()
for target in "${all_targets[@]}"; do
  if [ -z "${FUZZ_TARGETS:-}" ] || [[ " $FUZZ_TARGETS " == *" $target "* ]]; then
    selected+=("$target")
  fi
done
if [ ${#selected[@]} -eq 0 ]; then
  echo "scripts/fuzz.sh: FUZZ_TARGETS='$FUZZ_TARGETS' names no target (have: ${all_targets[*]})" >&2
  exit 2
fi

# No sanitizer: the code under test is safe Rust, the findings are panics (debug assertions and
# overflow checks stay on), and it runs twice as fast. 16 codegen units rather than cargo-fuzz's
# 1: the build (kube, etcd-client, boringtun... instrumented) takes half the time on two cores,
# for fuzzing a few per cent slower.
fuzz_dir=tests/fuzz
target_dir=$root/target/fuzz
fuzz_flags=(--fuzz-dir "$fuzz_dir" --sanitizer none --codegen-units 16 --target-dir "$target_dir")

echo "== fuzz: building $fuzz_dir (${selected[*]})"
# --locked: the committed lock file must already describe the build.
cargo +nightly fetch --locked --manifest-path "$fuzz_dir/Cargo.toml"
nice -n "$nice_level" cargo +nightly fuzz build "${fuzz_flags[@]}"

failed=0
for target in "${selected[@]}"; do
  work=$target_dir/corpus/$target
  artifacts=$target_dir/artifacts/$target
  log=$target_dir/logs/$target.log
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  echo "== fuzz: $target for ${seconds}s (log $log)"
  # New inputs go to the first corpus directory (under target/), never to the committed seeds.
  if nice -n "$nice_level" cargo +nightly fuzz run "${fuzz_flags[@]}" \
    "$target" "$work" "$fuzz_dir/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    echo "   ok: ${execs:-?} execs; last status: ${last:-none}"
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    echo "!! fuzz: $target FAILED" >&2
    grep -E "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -5 >&2 || true
    if [ -n "$artifact" ]; then
      echo "   crashing input: $artifact" >&2
      echo "   reproduce: cargo +nightly fuzz run ${fuzz_flags[*]} $target $artifact" >&2
    else
      echo "   no crashing input was written; the whole log is $log" >&2
      tail -20 "$log" >&2
    fi
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "scripts/fuzz.sh: at least one fuzz target failed (see above)" >&2
  exit 1
fi
echo "== fuzz: every target ran ${seconds}s without a finding"
