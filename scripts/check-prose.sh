#!/usr/bin/env bash
# Fails if the project's text speaks of how it was built instead of what it is: work sessions,
# stops, issues as work items, the people who built it, or a commit hash as the source of a
# number (a number names the command and the version that produced it). Run by .ci/run.
# A line that must use such a word legitimately carries `prose-ok` (e.g. in a comment).
set -euo pipefail
cd "$(dirname "$0")/.."

paths=(README.md docs src tests benches proto examples scripts fuzz/README.md fuzz/fuzz_targets .ci)
words='\bsessions?\b|\bstops? [0-9]+\b|\b(the|this|that|an|our|which|open|filed) issues?\b|\bissues? #?[0-9]+\b|\bissue'"'"'s\b|\bengineers?\b|\bcommit(s|ted)? (at |of )?[0-9a-f]{7,40}\b'
hash='(?<![0-9A-Za-z_])(?=[0-9a-f]{7,12}(?![0-9A-Za-z_]))(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]+'

found=0
report() {
    if [ -n "$1" ]; then
        echo "$2:"
        echo "$1"
        found=1
    fi
}
self=scripts/check-prose.sh
report "$(grep -rnIiP "$words" "${paths[@]}" --exclude-dir=target | grep -v "^$self:" | grep -v 'prose-ok' || true)" \
    "process words (sessions, stops, issues as tasks, people)"
report "$(grep -rnIP "$hash" "${paths[@]}" --exclude-dir=target | grep -v "^$self:" | grep -v 'prose-ok' || true)" \
    "what looks like a commit hash (name the command and version instead)"
if [ "$found" -ne 0 ]; then
    echo "check-prose: the project speaks of the project alone; rephrase the lines above" >&2
    exit 1
fi
echo "check-prose: clean"
