# Shared by the restart scripts in this directory (sourced; needs B = the sidb binary, D = the data
# directory, A = the listen address).

now() { date +%s.%N; }

# The benchmark servers keep the HTTP port off unless a script sets it, so that two scripts can run
# side by side.
export SIDB__SERVER__HTTP_LISTEN=${SIDB__SERVER__HTTP_LISTEN-}

# start LOG: runs `sidb serve` into LOG; sets PID, T0 (its start) and READY (seconds until it
# reported ready)
start() {
  T0=$(now)
  "$B" serve --data-dir "$D" --listen $A > "$1" 2>&1 &
  PID=$!
  until grep -q 'sidb::server: ready' "$1"; do sleep 0.05; done
  READY=$(echo "$(now) - $T0" | bc)
}
