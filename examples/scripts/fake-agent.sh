#!/bin/sh
# A stand-in for `claude -p …`: reads its prompt on stdin, "thinks", reports tokens and cost on
# fd 3 (as a real agent wrapper would), and sets an output for the next task.
prompt=$(cat)
echo "agent got prompt: $prompt"
echo "heartbeat" >&3
sleep 0.3
echo "cost input_tokens=1200 output_tokens=340 model=claude-sonnet-4-5" >&3
echo "output answer=Rust: fast, safe, productive." >&3
echo "done"
