#!/usr/bin/env bash
# Roll a p2pfl consortium out to its members' hosts over SSH.
#
#   rollout.sh BUNDLES_DIR ACTION [member...] [--dry-run]
#
# BUNDLES_DIR is what `p2pfl consortium init ... --out BUNDLES_DIR` wrote (run
# `p2pfl consortium check BUNDLES_DIR` first). Hosts come from the endpoints in
# BUNDLES_DIR/consortium.toml; the actions apply to every member unless some are named.
#
# ACTION (usual order: install, copy, start):
#   install  service user, venv with torch 2.13.0 (CPU) then p2pfl from $P2PFL_SOURCE,
#            and the systemd unit p2pfl-node@.service
#   copy     send each member ONLY its own bundle (it holds that member's secret key)
#   start    enable and start p2pfl-node@<member>
#   status   systemctl status of each node
#   stop     stop and disable each node
#   logs     the last $LOG_LINES journal lines of each node
#
# Options:
#   --dry-run, -n  print the ssh/rsync commands instead of running them
#
# Environment:
#   SSH_USER         login user on the hosts (default: ssh's choice); needs passwordless sudo
#   REMOTE_DIR       install root on the hosts (default /opt/p2pfl)
#   P2PFL_SOURCE     for install: a wheel file or project checkout here (copied over),
#                    or a pip requirement such as git+https://example.org/p2pfl.git@v0.1.0
#   SERVICE_USER     account the nodes run as (default p2pfl)
#   TORCH_INDEX_URL  where torch comes from (default the CPU wheel index)
#   REMOTE_PYTHON    python on the hosts, >= 3.11 (default python3)
#   SSH_OPTS         ssh options (default "-o BatchMode=yes")
#   LOG_LINES        lines shown by logs (default 100)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TORCH_VERSION=2.13.0
UNIT=p2pfl-node@.service
ACTIONS=" install copy start status stop logs "

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { printf 'rollout.sh: %s\n' "$*" >&2; exit 2; }

DRY_RUN=0
positional=()
for arg in "$@"; do
  case $arg in
    --dry-run | -n) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $arg (see --help)" ;;
    *) positional+=("$arg") ;;
  esac
done
if ((${#positional[@]} < 2)); then
  usage >&2
  exit 2
fi
BUNDLES=${positional[0]%/}
ACTION=${positional[1]}
WANTED=("${positional[@]:2}")
[[ $ACTIONS == *" $ACTION "* ]] || die "unknown action '$ACTION'; use one of:$ACTIONS"
[[ -f $BUNDLES/consortium.toml ]] || die "$BUNDLES/consortium.toml not found; give the directory 'p2pfl consortium init --out' wrote"

REMOTE_DIR=${REMOTE_DIR:-/opt/p2pfl}
SERVICE_USER=${SERVICE_USER:-p2pfl}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3}
LOG_LINES=${LOG_LINES:-100}
SSH_OPTS=${SSH_OPTS--o BatchMode=yes}
read -r -a SSH_ARGS <<<"$SSH_OPTS"
# These end up inside remote shell commands and a sed expression: keep them plain.
[[ $REMOTE_DIR =~ ^/[A-Za-z0-9/_.-]*$ ]] || die "REMOTE_DIR must be an absolute path of letters, digits and / _ . -"
[[ $SERVICE_USER =~ ^[a-z_][a-z0-9_-]*$ ]] || die "SERVICE_USER must be a plain user name"
[[ $LOG_LINES =~ ^[0-9]+$ ]] || die "LOG_LINES must be a number"
if [[ $ACTION == install && -z ${P2PFL_SOURCE:-} ]]; then
  die "install needs P2PFL_SOURCE: a wheel (dist/p2pfl_gossip-0.1.0-py3-none-any.whl), a checkout, or git+https://..."
fi

# "name host" per selected member, in consortium order; names were validated by init.
MEMBERS=$(python3 - "$BUNDLES/consortium.toml" ${WANTED[@]+"${WANTED[@]}"} <<'PY'
import re
import sys

try:
    import tomllib
except ImportError:
    sys.exit("rollout.sh: python3 >= 3.11 is needed here to read consortium.toml (tomllib)")
path, wanted = sys.argv[1], sys.argv[2:]
try:
    with open(path, "rb") as handle:
        members = tomllib.load(handle).get("members", [])
except (OSError, tomllib.TOMLDecodeError) as exc:
    sys.exit(f"rollout.sh: cannot read {path}: {exc}")
names = [str(m.get("name", "")) for m in members]
unknown = [w for w in wanted if w not in names]
if unknown:
    sys.exit(f"rollout.sh: not members: {', '.join(unknown)}; members are {', '.join(names)}")
for member, name in zip(members, names):
    if wanted and name not in wanted:
        continue
    found = re.fullmatch(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d+)", str(member.get("endpoint", "")))
    if not found or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        sys.exit(f"rollout.sh: member {name!r} has an unusable name or endpoint {member.get('endpoint')!r}")
    print(name, found.group(1).strip("[]"))
PY
) || exit 2

# Print arguments as a shell would need them typed (used for --dry-run and remote commands).
quote() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//\'/\'\\\'\'}'")
    fi
  done
  printf '%s' "${out[*]}"
}

run() {
  if ((DRY_RUN)); then
    quote "$@"
    printf '\n'
  else
    "$@"
  fi
}

# ssh HOST COMMAND: COMMAND is one string, run by the remote login shell.
remote() { run ssh ${SSH_ARGS[@]+"${SSH_ARGS[@]}"} "$TARGET" "$1"; }
# rsync as root on the far side, so files can land owned by the service user.
push() { run rsync -a --rsync-path="sudo rsync" -e "ssh $SSH_OPTS" "$@"; }

RD=$REMOTE_DIR
SU=$SERVICE_USER
RD_Q=$(quote "$RD")

do_install() {
  local source=$P2PFL_SOURCE
  remote "sudo install -d -m 0755 $RD_Q $RD_Q/dist $RD_Q/bundles"
  if [[ -f $P2PFL_SOURCE ]]; then # a wheel: pip needs its file name unchanged
    push "$P2PFL_SOURCE" "$RTARGET:$RD/dist/"
    source="$RD/dist/$(basename "$P2PFL_SOURCE")"
  elif [[ -d $P2PFL_SOURCE ]]; then # a checkout: send the sources, not its venv or runs
    push --delete --exclude=.git --exclude=.venv --exclude=runs --exclude=__pycache__ --exclude='*.egg-info' \
      "${P2PFL_SOURCE%/}/" "$RTARGET:$RD/dist/src/"
    source="$RD/dist/src"
  fi
  push "$SCRIPT_DIR/$UNIT" "$RTARGET:$RD/dist/$UNIT"
  local pip="$RD_Q/venv/bin/pip install --quiet --disable-pip-version-check"
  local script
  # torch first, from the CPU index: resolving p2pfl alone would pull a multi-GB CUDA build.
  # Naming torch==$TORCH_VERSION again with p2pfl keeps pip from replacing it.
  script="set -euo pipefail
$(quote "$REMOTE_PYTHON") -c \"import sys; sys.exit(sys.version_info < (3, 11))\" || { echo \"p2pfl needs python >= 3.11 (set REMOTE_PYTHON)\" >&2; exit 1; }
id -u $SU >/dev/null 2>&1 || useradd --system --user-group --home-dir $RD_Q --no-create-home --shell /usr/sbin/nologin $SU
[ -x $RD_Q/venv/bin/python ] || $(quote "$REMOTE_PYTHON") -m venv $RD_Q/venv
$pip --upgrade pip
$pip --index-url $(quote "$TORCH_INDEX_URL") torch==$TORCH_VERSION
$pip $(quote "$source") torch==$TORCH_VERSION
sed -e s#/opt/p2pfl#$RD#g -e s#^User=p2pfl\\\$#User=$SU# -e s#^Group=p2pfl\\\$#Group=$SU# $RD_Q/dist/$UNIT >/etc/systemd/system/$UNIT
systemctl daemon-reload"
  remote "sudo bash -c $(quote "$script")"
}

do_copy() {
  local name=$1 bundle=$BUNDLES/$1 strays
  [[ -d $bundle ]] || { echo "rollout.sh: $bundle is missing" >&2; return 1; }
  # A bundle must only ever carry its own member's secret key.
  strays=$(find "$bundle" -name '*.key_secret' ! -path "$bundle/keys/$name.key_secret")
  [[ -z $strays ]] || { echo "rollout.sh: refusing to send other secret keys: $strays" >&2; return 1; }
  remote "sudo install -d -m 0755 $RD_Q/bundles && sudo install -d -o $SU -g $SU -m 0750 $RD_Q/bundles/$name"
  # state/ is the node's own (checkpoints, metrics): never overwrite or delete it.
  push --delete --exclude=/state/ --chown="$SU:$SU" "$bundle/" "$RTARGET:$RD/bundles/$name/"
  remote "sudo install -d -o $SU -g $SU -m 0700 $RD_Q/bundles/$name/state"
}

do_start() { remote "sudo systemctl enable --now p2pfl-node@$1.service"; }
# disable too: a stopped node must not come back at the next reboot
do_stop() { remote "sudo systemctl disable --now p2pfl-node@$1.service"; }
do_status() { remote "systemctl status --no-pager --lines=5 p2pfl-node@$1.service"; }
do_logs() { remote "sudo journalctl --no-pager --lines=$LOG_LINES --unit=p2pfl-node@$1.service"; }

failed=()
# fd 3: ssh reads stdin, and must not swallow the member list.
while read -r name host <&3; do
  [[ -n $name ]] || continue
  TARGET=${SSH_USER:+$SSH_USER@}$host
  if [[ $host == *:* ]]; then RTARGET=${SSH_USER:+$SSH_USER@}[$host]; else RTARGET=$TARGET; fi
  printf '==> %s %s (%s)\n' "$ACTION" "$name" "$host" >&2
  # A subshell with its own errexit: one member's failure must not stop the others,
  # and inside `if`/`||` bash would silently ignore set -e.
  set +e
  (
    set -e
    "do_$ACTION" "$name" "$host"
  )
  rc=$?
  set -e
  ((rc == 0)) || failed+=("$name")
done 3<<<"$MEMBERS"

if ((${#failed[@]})); then
  printf 'rollout.sh: %s failed for: %s\n' "$ACTION" "${failed[*]}" >&2
  exit 1
fi
