#!/bin/bash
# benches/eio-deadline.sh: how long a read of a chunk no live node holds takes to fail with EIO,
# fetch deadline 5 s: node A holds the image, B mounts it through its own
# node, A is killed, B reads files it never read.
set -u
S=${STRATA:-/var/cache/strata-target/release/strata}
W=$(mktemp -d /tmp/eio-deadline.XXXX)
A=$W/a; B=$W/b; C=$W/certs
$S --data-dir $A cert init-ca --dir $C >/dev/null
for n in node-a node-b; do $S --data-dir $A cert issue --node $n --dir $C >/dev/null; done
$S --data-dir $A demo >/dev/null 2>&1
IMG=$($S --data-dir $A images --format '{{.Name}}' | head -1)
$S --data-dir $A serve --node node-a --cert-dir $C --listen 127.0.0.1:7601 --metrics '' --fetch-deadline 5 > $W/a.out 2> $W/a.log &
PA=$!
sleep 1
STRATA_NODE__BACKGROUND_FETCH=none $S --data-dir $B serve --node node-b --cert-dir $C --listen 127.0.0.1:7602 --metrics '' --seed 127.0.0.1:7601 --fetch-deadline 5 > $W/b.out 2> $W/b.log &
PB=$!
for i in $(seq 50); do $S --data-dir $B peers 2>/dev/null | grep -q "node-a.*alive" && break; sleep 0.2; done
mkdir -p $W/mnt
$S --data-dir $B mount "$IMG" $W/mnt --read-only
FILES=$(cd $W/mnt && find . -type f -size +20k | head -6)
first=$(echo "$FILES" | head -1)
cat "$W/mnt/$first" > /dev/null && echo "read $first while A lives"
kill -9 $PA
for f in $(echo "$FILES" | tail -n +2); do
  start=$(date +%s.%N)
  if cat "$W/mnt/$f" > /dev/null 2> $W/err; then r=ok; else r=$(cat $W/err | tr -d '\n'); fi
  end=$(date +%s.%N)
  printf "%s: %.2f s (%s)\n" "$f" "$(echo "$end - $start" | bc)" "$r"
done
$S --data-dir $B umount --lazy $W/mnt
kill $PB; wait $PB 2>/dev/null
echo "work dir $W"
