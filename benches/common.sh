# Shared setup of the benchmark scripts, sourced by them: checks for GNU time, builds the
# release binary and sets `veer` to its path, or to $VEER when it is set (to compare another
# build). Run from the repository root.
if [ ! -x /usr/bin/time ]; then
  echo "/usr/bin/time is missing: install it with 'apt-get install -y time'" >&2
  exit 1
fi
if [ -n "${VEER:-}" ]; then
  veer=$VEER
else
  cargo build --release --quiet
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
