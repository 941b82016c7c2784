#!/bin/sh
# Prints what `claude -p "$PROMPT" --output-format json` prints at the end: one JSON result line
# with the answer, total_cost_usd and token usage. $1 names the review, $2 is its cost.
name="${1:-task}"
usd="${2:-0.0100}"
echo "thinking about $name…" >&2
sleep 0.5
printf '{"type":"result","subtype":"success","is_error":false,"result":"%s review: looks fine","total_cost_usd":%s,"usage":{"input_tokens":2100,"output_tokens":480}}\n' "$name" "$usd"
