#!/bin/sh
# Pretends to fetch pages about a topic: progress and a heartbeat on fd 3, an output at the end.
topic="${1:-rust}"
for page in 1 2 3; do
  echo "fetching page $page about $topic"
  echo "progress $page/3 fetching page $page" >&3
  sleep 0.2
done
echo "output summary=$topic is a language empowering everyone" >&3
