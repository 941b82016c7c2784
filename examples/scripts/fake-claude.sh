#!/bin/sh
# A stand-in for Claude Code (`claude -p "$PROMPT" --output-format json|stream-json --verbose`):
# prints a result shaped like the real one, so no API key is needed to try gaffer's agent tasks.
#
#   fake-claude.sh NAME USD [compact|pretty|stream] [HAIKU_USD]
#
# NAME names the review, USD is what the main model (Sonnet) cost, HAIKU_USD (default 0) what a
# helper model cost; total_cost_usd is their sum, split by model in `modelUsage` as Claude Code
# does. `compact` prints the result on one line (--output-format json), `pretty` indented (as
# `| jq .` would), `stream` as --output-format stream-json --verbose: an init line, assistant
# messages as the work goes, and the result line last.
#
# With FAKE_AGENT_RESULT set, the result (the agent's answer) is that text (no `"` or `\`)
# instead of "NAME review: looks fine".
#
# With FAKE_AGENT_LEDGER set, each model's line `MODEL USD IN OUT CACHE_READ CACHE_WRITE` is
# appended to that file: what was printed, for a test to add up.
name="${1:-task}"
usd="${2:-0.0100}"
layout="${3:-compact}"
haiku_usd="${4:-0}"
sonnet=claude-sonnet-4-5-20250929
haiku=claude-haiku-4-5-20251001
session="fake-$name-$$"
total=$(awk -v a="$usd" -v b="$haiku_usd" 'BEGIN { printf "%.6f", a + b }')

ledger() {
    [ -n "$FAKE_AGENT_LEDGER" ] && echo "$*" >> "$FAKE_AGENT_LEDGER"
    return 0
}

# modelUsage entries, on one line; the helper model only when it cost something.
model_usage() {
    printf '"%s":{"inputTokens":12,"outputTokens":480,"cacheReadInputTokens":20480,"cacheCreationInputTokens":2100,"webSearchRequests":0,"costUSD":%s,"contextWindow":200000}' "$sonnet" "$usd"
    if [ "$haiku_usd" != 0 ]; then
        printf ',"%s":{"inputTokens":900,"outputTokens":150,"cacheReadInputTokens":0,"cacheCreationInputTokens":0,"webSearchRequests":0,"costUSD":%s,"contextWindow":200000}' "$haiku" "$haiku_usd"
    fi
}

result_line() {
    printf '{"type":"result","subtype":"success","is_error":false,"duration_ms":1500,"duration_api_ms":1400,"num_turns":2,"result":"%s","session_id":"%s","total_cost_usd":%s,"usage":{"input_tokens":12,"cache_creation_input_tokens":2100,"cache_read_input_tokens":20480,"output_tokens":480,"server_tool_use":{"web_search_requests":0},"service_tier":"standard"},"modelUsage":{%s},"permission_denials":[],"uuid":"00000000-0000-4000-8000-000000000000"}\n' \
        "${FAKE_AGENT_RESULT:-$name review: looks fine}" "$session" "$total" "$(model_usage)"
}

case "$layout" in
stream)
    printf '{"type":"system","subtype":"init","cwd":"%s","session_id":"%s","tools":["Bash","Read"],"mcp_servers":[],"model":"%s","permissionMode":"default","apiKeySource":"none"}\n' "$PWD" "$session" "$sonnet"
    for step in 1 2 3 4; do
        sleep 0.4
        printf '{"type":"assistant","message":{"id":"msg_%s_%s","type":"message","role":"assistant","model":"%s","content":[{"type":"text","text":"step %s of the %s review"}],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"cache_creation_input_tokens":525,"cache_read_input_tokens":5120,"output_tokens":120}},"parent_tool_use_id":null,"session_id":"%s"}\n' \
            "$name" "$step" "$sonnet" "$step" "$name" "$session"
    done
    result_line
    ;;
pretty)
    echo "thinking about $name…" >&2
    sleep 0.5
    # The same result, indented the way `jq .` prints it.
    result_line | awk '
        { s = $0; depth = 0; out = ""; instr = 0
          for (i = 1; i <= length(s); i++) {
            c = substr(s, i, 1)
            if (instr) { out = out c; if (c == "\\") { i++; out = out substr(s, i, 1) } else if (c == "\"") instr = 0; continue }
            n = substr(s, i + 1, 1)
            if (c == "\"") { instr = 1; out = out c }
            else if ((c == "{" && n == "}") || (c == "[" && n == "]")) { out = out c n; i++ }
            else if (c == "{" || c == "[") { depth++; out = out c "\n" sprintf("%" depth * 2 "s", "") }
            else if (c == "}" || c == "]") { depth--; out = out "\n" sprintf("%" depth * 2 "s", "") c }
            else if (c == ",") { out = out ",\n" sprintf("%" depth * 2 "s", "") }
            else if (c == ":") { out = out ": " }
            else out = out c
          }
          print out }'
    ;;
*)
    echo "thinking about $name…" >&2
    sleep 0.5
    result_line
    ;;
esac
ledger "$sonnet $usd 12 480 20480 2100"
[ "$haiku_usd" != 0 ] && ledger "$haiku $haiku_usd 900 150 0 0"
exit 0
