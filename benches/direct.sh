#!/usr/bin/env bash
# Direct access under `udax run` against the same program on the plain mount and on tmpfs, in
# one run: fio (psync, one job) 4 KiB random reads and overwrites of a written file, 4 KiB
# appends to a new file, 1 MiB sequential reads and overwrites; then loads through a mapping
# (fio's mmap engine: the file mapped once, each read a copy out of the mapping), 4 KiB random and
# 1 MiB sequential. fio calls pread/pwrite, which the preload library serves from the image's
# memory; appends grow the file under a lease (DESIGN.md "Appends by lease"); mmap maps the image
# itself ("Mappings served from the image"). Prints IOPS, time per call (for 1 MiB, GiB/s), the
# time ratio of `udax run` to tmpfs (below 1: faster than tmpfs) and, for the mapped jobs, the
# page faults fio took (its own buffers included); last, the page faults a program takes in
# mmap and after it, loading every page of a mapped file. Needs root, /dev/fuse, fio, python3.
#
#   bash benches/direct.sh [SIZE_MB=128] [SECONDS=4] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-128}
secs=${2:-4}
rounds=${3:-3}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 1; }
cargo build --release -q -p udax-cli -p udax-preload
udax="${CARGO_TARGET_DIR:-$PWD/target}/release/udax"

work=$(mktemp -d /dev/shm/udax-direct.XXXXXX)
mnt=$(mktemp -d /tmp/udax-direct-mnt.XXXXXX)
cleanup() {
  umount "$mnt" 2>/dev/null || true
  rmdir "$mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/tmpfs"
"$udax" mkfs "$work/img" --size $((size_mb * 4 + 256))M >/dev/null
"$udax" mount "$work/img" "$mnt"

one() {  # one SIDE DIR NAME RW BS ENGINE: prints "iops MiB/s faults" of one fio job
  local side=$1 dir=$2 name=$3 rw=$4 bs=$5 engine=$6 pre=() timing=(--time_based --runtime="$secs")
  [ "$side" = run ] && pre=("$udax" run "$mnt" --)
  # An append run writes a new file once from start to end: timed, fio would wrap around and
  # overwrite; and without fio's preallocation, which would make every write an overwrite of
  # unwritten blocks inside EOF.
  [ "$name" = append-4k ] && timing=(--fallocate=none)
  "${pre[@]}" fio --name="$name" --directory="$dir" --rw="$rw" --bs="$bs" --size="${size_mb}M" \
    --ioengine="$engine" "${timing[@]}" --invalidate=0 --output-format=json \
    | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
s = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print("%.0f %.1f %d" % (s["iops"], s["bw_bytes"] / 2**20, j["majf"] + j["minf"]))'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf "%-17s %24s %24s %24s %10s\n" "job" "tmpfs" "udax mount" "udax run" "run/tmpfs"
for spec in "randread 4k" "randwrite 4k" "append 4k" "read 1m" "write 1m" "mmap-randread 4k" "mmap-read 1m"; do
  set -- $spec
  rw=${1#mmap-} engine=psync
  [ "$rw" != "$1" ] && engine=mmap
  [ "$rw" = append ] && rw=write
  declare -A iops=() med=() faults=()
  for r in $(seq "$rounds"); do
    for side in tmpfs mount run; do
      dir=$mnt
      [ "$side" = tmpfs ] && dir=$work/tmpfs
      # Appends start from an empty file each time; the others reuse the file fio laid out.
      [ "$1" = append ] && rm -f "$dir/$1-$2".*
      read -r i _ f <<<"$(one "$side" "$dir" "$1-$2" "$rw" "$2" "$engine")"
      iops[$side]+="$i "
      faults[$side]+="$f "
    done
  done
  line=$(printf "%-17s" "$1 $2")
  for side in tmpfs mount run; do
    m=$(tr ' ' '\n' <<<"${iops[$side]}" | grep . | median)
    med[$side]=$m
    if [ "$2" = 1m ]; then
      line+=$(printf " %10s IOPS %5.2f GiB/s" "$m" "$(python3 -c "print($m / 1024)")")
    else
      line+=$(printf " %10s IOPS %7.2f µs" "$m" "$(python3 -c "print(1e6 / max($m, 1))")")
    fi
  done
  line+=$(printf " %9.2f×" "$(python3 -c "print(${med[tmpfs]} / max(${med[run]}, 1))")")
  if [ "$engine" = mmap ]; then
    line+="   faults:"
    for side in tmpfs mount run; do
      line+=" $side $(tr ' ' '\n' <<<"${faults[$side]}" | grep . | median)"
    done
  fi
  echo "$line"
  unset iops faults
  rm -f "$mnt/$1-$2".* "$work/tmpfs/$1-$2".*
done

# Page faults a program takes after mmap: map a written file of SIZE_MB and load one byte of
# every page (python3; ru_minflt around the mmap call and around the loads).
probe='
import mmap, os, resource, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
s = sum(m[i] for i in range(0, size, 4096))
r2 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print("%d in mmap, %d after" % (r1 - r0, r2 - r1))'
line=$(printf "%-17s" "faults, $size_mb MiB")
for side in tmpfs mount run; do
  dir=$mnt pre=()
  [ "$side" = tmpfs ] && dir=$work/tmpfs
  [ "$side" = run ] && pre=("$udax" run "$mnt" --)
  head -c "${size_mb}M" /dev/urandom >"$dir/probe"
  line+=$(printf " %24s" "$("${pre[@]}" python3 -c "$probe" "$dir/probe")")
  rm -f "$dir/probe"
done
echo "$line"
