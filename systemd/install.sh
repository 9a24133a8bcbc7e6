#!/usr/bin/env bash
# Installs carebed as a systemd service (Raspberry Pi OS bookworm / Debian 12). Run as root from
# a checkout: `sudo systemd/install.sh`. Safe to run again: it upgrades the code, keeps the
# configuration, repairs permissions and restarts the service if it was running.
#
#   --dry-run        print every step and command, change nothing (needs no root)
#   --no-start       install and enable, but do not start or restart the service
#   --python PATH    interpreter for the venv (default: /usr/bin/python3, must be >= 3.11)
#
# Exit status: 0 installed; 2 usage; 1 other failure; 78 the configuration does not pass
# `carebed check-config` (edit /etc/carebed/carebed.toml, then run this script again).
set -euo pipefail
umask 0022 # the venv must be readable by the service user whatever root's umask is

SRC_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
readonly SRC_DIR
readonly SELF="$SRC_DIR/systemd/install.sh"
# Every path below is absolute; "/" is a working directory the carebed user can enter too.
cd /
readonly SERVICE=carebed.service
readonly SERVICE_USER=carebed
readonly PREFIX=/opt/carebed
readonly VENV="$PREFIX/venv"
readonly CONF_DIR=/etc/carebed
readonly CONF="$CONF_DIR/carebed.toml"
readonly UNIT_PATH="/etc/systemd/system/$SERVICE"
readonly SYSUSERS_PATH=/etc/sysusers.d/carebed.conf
readonly TMPFILES_PATH=/etc/tmpfiles.d/carebed.conf
readonly DOC_PATH=/usr/share/doc/carebed/INSTALL-systemd.md
readonly EX_CONFIG=78

dry_run=0
start=1
# The system interpreter: the venv links to it, so it must be one the carebed user can run.
python=/usr/bin/python3

usage() {
	sed -n '2,11p' "$SELF" | sed 's/^# \{0,1\}//'
}

# die MESSAGE [EXIT_STATUS]
die() {
	printf 'install.sh: error: %s\n' "$1" >&2
	exit "${2:-1}"
}

step() {
	printf '\n== %s\n' "$*"
}

note() {
	printf '# %s\n' "$*"
}

# Print a command, then run it unless this is a dry run.
run() {
	printf '+'
	printf ' %q' "$@"
	printf '\n'
	if ((dry_run)); then
		return 0
	fi
	"$@"
}

# The checkout without VCS data, virtualenvs, caches and build output.
copy_source_tree() {
	tar -C "$1" -cf - \
		--exclude=.git --exclude=.venv --exclude=venv --exclude=build --exclude=dist \
		--exclude='*.egg-info' --exclude=__pycache__ --exclude=.mypy_cache \
		--exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis . |
		tar -C "$2" -xf -
}

python_ok() {
	"$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

while (($#)); do
	case "$1" in
	--dry-run) dry_run=1 ;;
	--no-start) start=0 ;;
	--python)
		(($# >= 2)) || die "--python needs a path" 2
		python="$2"
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown argument: $1" 2
		;;
	esac
	shift
done

# --- Preflight: read-only checks, the same in a dry run ---------------------------------------
if ((dry_run)); then
	note "dry run: nothing below is executed"
elif ((EUID != 0)); then
	die "run as root (or with --dry-run to see what would be done)"
fi

for file in requirements.lock pyproject.toml systemd/carebed.service \
	systemd/carebed.sysusers.conf systemd/carebed.tmpfiles.conf \
	config/carebed.example.toml docs/INSTALL-systemd.md; do
	[[ -f "$SRC_DIR/$file" ]] || die "missing $SRC_DIR/$file: run from a complete carebed checkout"
done
for tool in systemctl systemd-sysusers systemd-tmpfiles runuser tar; do
	command -v "$tool" >/dev/null || die "$tool not found: this installer needs systemd"
done
command -v "$python" >/dev/null || die "$python not found (apt-get install python3, or --python)"
python_ok "$python" ||
	die "$python must be Python >= 3.11 with venv and ensurepip (apt-get install python3-venv)"

# systemctl can only talk to a running manager; in a chroot (image build) we only enable.
booted=0
[[ -d /run/systemd/system ]] && booted=1

# --- 1. User, groups and the configuration directory ------------------------------------------
step "system user '$SERVICE_USER' (groups dialout, gpio, bluetooth) and $CONF_DIR"
run install -D -m 0644 "$SRC_DIR/systemd/carebed.sysusers.conf" "$SYSUSERS_PATH"
run systemd-sysusers "$SYSUSERS_PATH"
run install -D -m 0644 "$SRC_DIR/systemd/carebed.tmpfiles.conf" "$TMPFILES_PATH"
# Creates /etc/carebed 0750 root:carebed and resets everything inside to root:carebed 0640/0750.
run systemd-tmpfiles --create "$TMPFILES_PATH"
if [[ -e "$CONF" ]]; then
	note "keeping the existing $CONF"
else
	run install -m 0640 -o root -g "$SERVICE_USER" "$SRC_DIR/config/carebed.example.toml" "$CONF"
	note "installed the example configuration: edit $CONF for this bed"
fi

# --- 2. The virtual environment -----------------------------------------------------------------
step "virtual environment $VENV from requirements.lock"
run install -d -m 0755 "$PREFIX"
if [[ -x "$VENV/bin/python" ]] && python_ok "$VENV/bin/python"; then
	note "reusing $VENV"
else
	# --clear: a venv left behind by an older system Python cannot be repaired in place.
	run "$python" -m venv --clear "$VENV"
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
# The pinned dependency set, exactly; then our package without letting it pull anything else.
run "${pip[@]}" install --require-virtualenv -r "$SRC_DIR/requirements.lock"
# pip builds a local project in place; build from a scratch copy so that root leaves no build/
# or *.egg-info behind in the checkout.
if ((dry_run)); then
	stage="${TMPDIR:-/tmp}/carebed-build.XXXXXX"
else
	stage="$(mktemp -d "${TMPDIR:-/tmp}/carebed-build.XXXXXX")"
	trap 'rm -rf -- "$stage"' EXIT
fi
run copy_source_tree "$SRC_DIR" "$stage"
run "${pip[@]}" install --require-virtualenv --no-deps --force-reinstall --no-cache-dir "$stage"

# --- 3. systemd unit and documentation ------------------------------------------------------------
step "unit $UNIT_PATH"
run install -D -m 0644 "$SRC_DIR/systemd/carebed.service" "$UNIT_PATH"
run install -D -m 0644 "$SRC_DIR/docs/INSTALL-systemd.md" "$DOC_PATH"
if ((booted)); then
	run systemctl daemon-reload
fi

# --- 4. Configuration check, as the service user ---------------------------------------------------
step "configuration check"
# The venv's python is a symlink to the base interpreter; one under /root (pyenv) would leave the
# service with 203/EXEC.
if ! run runuser -u "$SERVICE_USER" -- "$VENV/bin/python" -c ''; then
	die "the $SERVICE_USER user cannot run $VENV/bin/python: rebuild it with --python /usr/bin/python3"
fi
# As carebed, so that a key file the service cannot read fails here and not at start.
if ! run runuser -u "$SERVICE_USER" -- "$VENV/bin/carebed" check-config "$CONF"; then
	die "$CONF does not pass check-config; fix it, then run install.sh again" "$EX_CONFIG"
fi

# --- 5. Enable and start --------------------------------------------------------------------------
step "enable $SERVICE"
if ((!booted)); then
	note "systemd is not running here (chroot or container): enabling only, it starts at boot"
	run systemctl enable "$SERVICE"
elif ((!start)); then
	run systemctl enable "$SERVICE"
else
	was_active=0
	if ((dry_run)); then
		note "if $SERVICE is already running, it is restarted to load the new code"
	elif systemctl is-active --quiet "$SERVICE"; then
		was_active=1
	fi
	run systemctl enable --now "$SERVICE"
	if ((was_active)); then
		run systemctl restart "$SERVICE"
	fi
	note "logs: journalctl -u carebed -o cat -f"
fi
step "done"
