#!/usr/bin/env bash
# CPU time per orchestration of the orchestrations bench on PostgreSQL, for comparing two builds on
# a shared machine where throughput alone is noisy. Linux only (reads /proc/stat); needs GNU time.
#
#   quark-worker/benches/cpu_per_orchestration.sh BENCH_BINARY N [more bench flags]
#
# BENCH_BINARY is the executable `cargo bench -p quark-worker --bench orchestrations --no-run`
# prints. Prints throughput, the machine's busy CPU-seconds over the run, the bench process's own
# (the worker and the 8 starting clients), and the rest (PostgreSQL, plus a fixed part of about
# 0.9 CPU-s for creating, migrating and dropping the bench's database: measure it with N=50), each
# per orchestration. Run the builds you compare alternately, several times each.
set -euo pipefail
bench=${1:?usage: $0 BENCH_BINARY N [bench flags]}
n=${2:?usage: $0 BENCH_BINARY N [bench flags]}
shift 2
[ -x /usr/bin/time ] || { echo "needs GNU time at /usr/bin/time" >&2; exit 1; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
ticks=$(getconf CLK_TCK)
out=$(mktemp)
times=$(mktemp)
before=$(busy)
/usr/bin/time -f "%U %S" -o "$times" "$bench" --bench --backend postgres --n "$n" --jobs 0 \
    --light 0 --start-batch 100 "$@" >"$out" 2>&1
after=$(busy)
read -r user sys <"$times"
rate=$(grep -o '[0-9]* orch/s' "$out" | head -1)
awk -v busy=$((after - before)) -v ticks="$ticks" -v user="$user" -v sys="$sys" -v n="$n" \
    -v rate="$rate" 'BEGIN {
        machine = busy / ticks; bench = user + sys; rest = machine - bench;
        printf "%s | machine %.1f CPU-s, bench process %.1f, rest %.1f | per orchestration: bench %.3f ms, rest %.3f ms\n",
            rate, machine, bench, rest, 1000 * bench / n, 1000 * rest / n
    }'
rm -f "$out" "$times"
