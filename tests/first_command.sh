#!/usr/bin/env bash
# README's first command, run as a new user would: from a copy of the repository outside the
# checkout, so nothing of the checkout is importable. The command builds the wheel and
# installs it (not editable) into a fresh venv, then `station run` starts on its built-in
# defaults. A file sent with DCMTK's storescu to the default port must land in
# ./station-data/outgoing. Then `station --version` and `station install-service` from that
# installation. Exit 0 when all of it works; the station is stopped by its PID either way.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="${STATION_TEST_DATA:-$repo/../shared/data/dicom}"
sample="$data/valid/CT_small.dcm"
work="$(mktemp -d)"
pid=""

cleanup() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

say() { echo "first-command: $*"; }
fail() { say "FAILED: $*"; [[ -f "$work/station.log" ]] && tail -40 "$work/station.log"; exit 1; }
wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...: poll the command every 0.5 s
    local limit=$(( $1 * 2 )) what=$2; shift 2
    for _ in $(seq "$limit"); do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || fail "the README's first command exited before $what"
        sleep 0.5
    done
    fail "no $what after $(( limit / 2 )) s"
}

[[ -f "$sample" ]] || fail "no sample file $sample (set STATION_TEST_DATA)"
command=$(awk '/^\*\*Install and run on built-in defaults\*\*/ {found=1}
               found && /^```sh$/ {getline; print; exit}' "$repo/README.md")
[[ "$command" == *"station run"* ]] || fail "README's first command not found (got: $command)"

src="$work/station"
mkdir "$src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf -) | tar -xf - -C "$src"
say "running in $src: $command"
(cd "$src" && exec setsid bash -c "$command" >"$work/station.log" 2>&1 </dev/null) &
pid=$!
wait_until 600 "station listening" grep -q "listening on 0.0.0.0:11112" "$work/station.log"
say "$(grep -m1 'listening on' "$work/station.log")"

TCP_NODELAY=1 /usr/bin/storescu -aec STATION 127.0.0.1 11112 "$sample" \
    || fail "storescu could not store $sample"
uid=$(/usr/bin/dcmdump +P SOPInstanceUID "$sample" | sed 's/.*\[\(.*\)\].*/\1/')
landed() { grep -rlq --include='*.dcm' -F "$uid" "$src/station-data/outgoing" 2>/dev/null; }
wait_until 120 "instance $uid in ./station-data/outgoing" landed
say "instance $uid delivered to ./station-data/outgoing"

venv_station=$(find "$src" -path '*/bin/station' -type f | head -1)
[[ -n "$venv_station" ]] || fail "no station script in the venv the command made"
if "$venv_station" --version | grep -qx "station [0-9][0-9a-z.+]*"; then
    say "$("$venv_station" --version)"
else
    fail "station --version"
fi
"$venv_station" install-service --root "$work/root" >/dev/null || fail "install-service"
[[ -f "$work/root/etc/systemd/system/station.service" ]] || fail "install-service wrote no unit"
say "install-service from the wheel wrote the unit"
say "ok"
