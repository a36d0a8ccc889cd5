#!/usr/bin/env bash
# tests/cli_device.sh HYB: asking for a device that cannot run the model is one clear line and a
# non-zero exit, never a traceback or a crash; `hyb devices` lists every device kind with a status.
set -u
hyb=$1
fail() { echo "FAIL: $*"; exit 1; }
out=$("$hyb" devices) || fail "hyb devices exited $?"
grep -q '^cpu  *available' <<<"$out" || fail "hyb devices: no cpu line: $out"
grep -q '^cuda ' <<<"$out" || fail "hyb devices: no cuda line: $out"
for dev in cuda cuda:3 tpu; do
    err=$("$hyb" generate --device "$dev" --max-tokens 2 "hello" 2>&1 >/dev/null)
    rc=$?
    [[ $rc -ne 0 && $rc -lt 128 ]] || fail "--device $dev: exit status $rc"
    [[ $(wc -l <<<"$err") -eq 1 ]] || fail "--device $dev: expected one line, got: $err"
    grep -qi 'traceback' <<<"$err" && fail "--device $dev: traceback: $err"
    grep -q "device '${dev%%:*}" <<<"$err" || fail "--device $dev: message does not name the device: $err"
    echo "ok --device $dev: $err"
done
echo "1 passed, 0 failed"
