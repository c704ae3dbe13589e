#!/usr/bin/env bash
# A/B of two builds of the gemv_profile example on the same machine, alternating runs:
#   benches/ab_gemv.sh OLD_BIN NEW_BIN N SECS MB TYPE...
# (build each with `cargo build --release -p lowbit-bench --example gemv_profile` and copy
# target/release/examples/gemv_profile away). For each type: 5 rounds of (old, new), each
# `SECS` seconds on 4096 × 4096 with N activation rows, one thread (THREADS=k in the
# environment: k threads), MB MiB of weight copies; prints the median weight GB/s (N = 1) or
# calls (N > 1) of each side and their ratio.
set -euo pipefail
old=$1 new=$2 n=$3 secs=$4 mb=$5
shift 5
field() { if [ "$n" = 1 ]; then grep -o '[0-9.]* GB/s' | cut -d' ' -f1; else grep -o '([0-9]* calls' | tr -d '(' | cut -d' ' -f1; fi; }
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
for t in "$@"; do
  o=() w=()
  for _ in 1 2 3 4 5; do
    o+=("$(GEMV_MB=$mb "$old" "$t" "$secs" "${THREADS:-1}" 4096 "$n" | field)")
    w+=("$(GEMV_MB=$mb "$new" "$t" "$secs" "${THREADS:-1}" 4096 "$n" | field)")
  done
  mo=$(median "${o[@]}") mw=$(median "${w[@]}")
  echo "$t n=$n old $mo new $mw ratio $(awk -v a="$mw" -v b="$mo" 'BEGIN { printf "%.2f", a / b }') | old: ${o[*]} | new: ${w[*]}"
done
