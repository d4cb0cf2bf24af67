#!/usr/bin/env bash
# fio through `udax mount` and on tmpfs, in the same run: 4 KiB random read and write, 1 MiB
# sequential read and write (psync, buffered, as programs use a mount). Prints each figure and
# its ratio to tmpfs. Needs root, /dev/fuse and fio (apt-get install fio).
#
# fio drops the file's cached pages before each job, so "randread 4k" is mostly page-cache
# misses, each a request to the server; "randread 4k warm" reads the same file a second time
# without dropping them (the mount keeps a file's page cache across opens).
#
#   bash benches/fio.sh [SIZE_MB=512] [SECONDS=10] [JOBS=1]
#   UDAX_MOUNT_OPTS=threads=1 bash benches/fio.sh ...   (mount options, e.g. to compare threads)
#   UDAX_MOUNT_OPTS=threads=1,poll=200 bash benches/fio.sh 256 5   (the request thread polls 200 µs)
# It builds and runs the udax of $CARGO_TARGET_DIR when that is set, else of target/.
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-512}
secs=${2:-10}
jobs=${3:-1}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 1; }
cargo build --release -q -p udax-cli
udax="${CARGO_TARGET_DIR:-$PWD/target}/release/udax"

work=$(mktemp -d /dev/shm/udax-fio.XXXXXX)
mnt=$(mktemp -d /tmp/udax-fio-mnt.XXXXXX)
cleanup() {
  umount "$mnt" 2>/dev/null || true
  rmdir "$mnt" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/tmpfs"
"$udax" mkfs "$work/img" --size $((size_mb * jobs * 2 + 256))M >/dev/null
"$udax" mount "$work/img" "$mnt" ${UDAX_MOUNT_OPTS:+-o "$UDAX_MOUNT_OPTS"}

run() {  # run DIR NAME RW BS [FIO_ARGS...]: prints "bandwidth_MiB/s iops"
  local dir=$1 name=$2 rw=$3 bs=$4
  shift 4
  fio --name="$name" --directory="$dir" --rw="$rw" --bs="$bs" --size="${size_mb}M" --numjobs="$jobs" \
    --ioengine=psync --time_based --runtime="$secs" --group_reporting --output-format=json "$@" \
    | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print("%.1f %.0f" % (side["bw_bytes"] / 2**20, side["iops"]))'
}

printf "%-22s %14s %14s %8s\n" "job ($jobs thread(s))" "udax mount" "tmpfs" "ratio"
report() {  # report LABEL UDAX TMPFS
  read -r ubw uiops <<<"$2"
  read -r tbw tiops <<<"$3"
  ratio=$(python3 -c "print('%.2f' % ($ubw / $tbw))")
  printf "%-22s %8s MiB/s %8s MiB/s %7s×   (%s vs %s IOPS)\n" "$1" "$ubw" "$tbw" "$ratio" "$uiops" "$tiops"
}
for spec in "randread 4k" "randwrite 4k" "read 1m" "write 1m"; do
  set -- $spec
  # fio lays the file out first so reads read data.
  u=$(run "$mnt" "$1-$2" "$1" "$2")
  t=$(run "$work/tmpfs" "$1-$2" "$1" "$2")
  report "$1 $2" "$u" "$t"
  if [ "$1" = randread ]; then
    u=$(run "$mnt" "$1-$2" "$1" "$2" --invalidate=0)
    t=$(run "$work/tmpfs" "$1-$2" "$1" "$2" --invalidate=0)
    report "$1 $2 warm" "$u" "$t"
  fi
  rm -f "$mnt/$1-$2".* "$work/tmpfs/$1-$2".*
done
"$udax" --version >/dev/null
