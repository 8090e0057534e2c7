#!/bin/bash
# The project's tests (the README's test command; what CI runs), in about the time of the
# end-to-end tier alone.
#
# The end-to-end tier (real VMs under QEMU) is most of the wall time, and a guest under TCG
# keeps about one of the machine's cores busy: dpkg, maintainer scripts and cloud-init run one
# process at a time. The unit, integration and hostile tiers need no VM, so they run beside it
# as a second pytest session, at a lower CPU priority (nice 10): they take what the VM leaves
# and hardly slow the tier that sets the wall time. Their output is held in a file and shown
# after the end-to-end tier's. The exit status is non-zero when either session failed.
#
# The IAM policy checks: both sessions record their AWS calls into one file; each judges its
# own requests; the end-to-end session runs the checks last, the unused-grant one (which needs
# the whole suite's calls) once the other session has ended (tests/conftest.py: OTHER_HALF_ENV,
# E2E_HALF_ARGS).
#
#   ./scripts/test.sh            both sessions, side by side
#   ./scripts/test.sh ARGS...    one plain `pytest ARGS...` (a file, -k, -m ...), nothing beside it
#
# Each session has its own --basetemp (two sessions sharing pytest's default temporary root
# would prune each other's directories): removed when both passed, kept and named otherwise.
set -o nounset -o pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON=.venv/bin/python

if [ "$#" -gt 0 ]; then
  exec "$PYTHON" -m pytest "$@"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/golden-ami-tests.XXXXXX")"
beside_log="$work/beside.log"
beside_status="$work/beside.status"
# What each session runs is named once, in tests/conftest.py.
mapfile -t e2e_half < <("$PYTHON" -c 'from tests.conftest import E2E_HALF_ARGS; print(*E2E_HALF_ARGS, sep="\n")')
unused_grant_check="$("$PYTHON" -c 'from tests.conftest import UNUSED_GRANT_CHECK; print(UNUSED_GRANT_CHECK)')"
if [ "${#e2e_half[@]}" -lt 2 ] || [ -z "$unused_grant_check" ]; then
  echo "[tests] cannot read E2E_HALF_ARGS / UNUSED_GRANT_CHECK from tests/conftest.py" >&2
  exit 1
fi
: >"$work/iam-actions.txt"
export GOLDEN_AMI_RECORD_AWS_ACTIONS="$work/iam-actions.txt"
beside_pid=""

stop_beside() {
  local pid
  pid="$(cat "$work/beside.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
  fi
  [ -z "$beside_pid" ] || wait "$beside_pid" 2>/dev/null
}
# A background job of a non-interactive shell ignores SIGINT: stop it here on Ctrl-C or SIGTERM
# (the end-to-end session in the foreground gets Ctrl-C itself and tears its VMs down).
trap 'stop_beside; echo "[tests] interrupted; temporary files kept in $work" >&2; exit 130' INT TERM

echo "[tests] unit, integration and hostile tiers started beside the end-to-end tier (output shown at the end)"
# The status is written by this subshell, not by the session: a session that died still ends
# the end-to-end session's wait for it.
(
  nice -n 10 "$PYTHON" -m pytest --basetemp="$work/beside" --deselect "$unused_grant_check" tests/unit tests/integration tests/hostile \
    >"$beside_log" 2>&1 </dev/null &
  echo "$!" >"$work/beside.pid"
  wait "$!"
  echo "$?" >"$beside_status"
) &
beside_pid=$!

GOLDEN_AMI_SUITE_OTHER_HALF="$beside_status" "$PYTHON" -m pytest --basetemp="$work/e2e" "${e2e_half[@]}"
e2e_exit=$?
wait "$beside_pid"
beside_pid=""
beside_exit="$(cat "$beside_status" 2>/dev/null || echo 1)"
trap - INT TERM

echo
echo "================ unit, integration and hostile tiers (ran beside the end-to-end tier) ================"
cat "$beside_log"
echo "[tests] end-to-end tier and IAM policy checks: exit ${e2e_exit}; unit, integration and hostile tiers: exit ${beside_exit}"
if [ "$e2e_exit" -ne 0 ] || [ "$beside_exit" -ne 0 ]; then
  echo "[tests] temporary files kept in $work" >&2
  exit 1
fi
rm -rf "$work"
