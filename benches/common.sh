# Shared setup of the benchmark scripts, sourced by them: checks for GNU time, builds the
# release binary and sets `veer` to its path, or to $VEER when it is set (to compare another
# build). Run from the repository root.
#
# The binary is built by `cargo test --workspace --release --no-run`, which also writes
# target/release/veer. `cargo build --release` resolves the dependencies' features without
# the dev-dependencies, so after a test build it recompiles many of the dependencies.
# By `cargo tree -e features`, the test build adds only regex-automata, regex-syntax, syn and
# zerocopy features (regex engines and Unicode classes for log filters, and macro support), so
# both commands build the same veer code.
if [ ! -x /usr/bin/time ]; then
  echo "/usr/bin/time is missing: install it with 'apt-get install -y time'" >&2
  exit 1
fi
if [ -n "${VEER:-}" ]; then
  veer=$VEER
else
  cargo test --workspace --release --no-run --quiet
  veer=target/release/veer
fi

# Prints the users tracked at the end of a run, from the summary in the run's log, or stops
# the script when the summary has no such line (its wording changed).
tracked_users() {
  local count
  count=$(awk '$1 == "tracked" && $2 == "at" && $3 == "end" {print $4}' "$1")
  if [ -z "$count" ]; then
    echo "no 'tracked at end' line in the run summary $1" >&2
    exit 1
  fi
  echo "$count"
}
