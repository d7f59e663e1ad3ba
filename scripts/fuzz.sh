#!/usr/bin/env bash
# Runs every fuzz target (docs/FUZZING.md) for SECONDS each, one after the other, niced.
#   ./scripts/fuzz.sh [SECONDS]          (default 60)
# Environment:
#   FUZZ_TARGETS="device uapi_get"   run only these targets
#   FUZZ_NICE=10                     niceness of the fuzzers (the machine is shared)
# Needs the nightly toolchain (cargo fuzz does; the project itself builds on stable) and
# installs cargo-fuzz into ~/.cargo/bin if it is missing. The fuzzers' own corpus (what they
# find beyond the committed seeds in <crate>/fuzz/corpus/) and any crash artifacts are kept
# under target/fuzz/. A crash fails the script, printing the artifact and how to reproduce it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
nice_level=${FUZZ_NICE:-10}
export PATH="$HOME/.cargo/bin:$PATH"

# crate directory:target, for every target there is.
all_targets=(
  daemon:device
  daemon:uapi_set
  daemon:uapi_get
  keymgr:store_record
  policy:policy_load
)

case "$seconds" in
  '' | *[!0-9]*) echo "scripts/fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;;
esac

if ! command -v rustup >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
  echo "scripts/fuzz.sh: the Rust nightly toolchain is missing; cargo fuzz needs it." >&2
  echo "Install it with: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install cargo-fuzz --locked, about 1.5 minutes)"
  cargo install cargo-fuzz --locked
fi

selected=()
for entry in "${all_targets[@]}"; do
  if [ -z "${FUZZ_TARGETS:-}" ] || [[ " $FUZZ_TARGETS " == *" ${entry#*:} "* ]]; then
    selected+=("$entry")
  fi
done
if [ ${#selected[@]} -eq 0 ]; then
  echo "scripts/fuzz.sh: FUZZ_TARGETS='$FUZZ_TARGETS' names no target (have: ${all_targets[*]#*:})" >&2
  exit 2
fi

# One target directory for every fuzz crate: their lock files follow the workspace's, so the
# dependencies they share are built once. No sanitizer: the code under test is safe Rust, the
# findings are panics (debug assertions and overflow checks stay on), and it runs twice as fast.
target_dir=$root/target/fuzz
fuzz_flags=(--sanitizer none --target-dir "$target_dir")

built=" "
for entry in "${selected[@]}"; do
  crate=${entry%%:*}
  [[ "$built" == *" $crate "* ]] && continue
  echo "== fuzz: building $crate/fuzz"
  # --locked: the committed lock file must already describe the build.
  cargo +nightly fetch --locked --manifest-path "$crate/fuzz/Cargo.toml"
  (cd "$crate" && nice -n "$nice_level" cargo +nightly fuzz build "${fuzz_flags[@]}")
  built+="$crate "
done

failed=0
for entry in "${selected[@]}"; do
  crate=${entry%%:*}
  target=${entry#*:}
  work=$target_dir/corpus/$target
  artifacts=$target_dir/artifacts/$target
  log=$target_dir/logs/$target.log
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  echo "== fuzz: $target for ${seconds}s (log $log)"
  # New inputs go to the first corpus directory (under target/), never to the committed seeds.
  if (cd "$crate" && nice -n "$nice_level" cargo +nightly fuzz run "${fuzz_flags[@]}" \
    "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1) >"$log" 2>&1; then
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
      echo "   reproduce: (cd $crate && cargo +nightly fuzz run ${fuzz_flags[*]} $target $artifact)" >&2
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
