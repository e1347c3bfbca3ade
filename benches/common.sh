# Shared setup of the benchmark scripts, sourced by them: checks for GNU time, builds the
# release binary and sets `veer` to its path. Run from the repository root.
if [ ! -x /usr/bin/time ]; then
  echo "/usr/bin/time is missing: install it with 'apt-get install -y time'" >&2
  exit 1
fi
cargo build --release --quiet
veer=target/release/veer
