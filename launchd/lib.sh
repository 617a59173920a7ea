# shellcheck shell=bash
# The variables read here (prog, label, system, log_dir) belong to the sourcing script, and those set here are
# for it (plist_dir, plist, domain, service): shellcheck cannot see across the `source`.
# shellcheck disable=SC2154,SC2034
# Shared by install.sh and uninstall.sh (sourced; written for the bash 3.2 that macOS ships): messages, the
# dry-run runner, option values, and where a job lives. The sourcing script sets $prog first.

die() {
	echo "$prog: error: $*" >&2
	exit 1
}
usage_error() {
	echo "$prog: error: $* (see launchd/$prog --help)" >&2
	exit 2
}
warn() { echo "$prog: warning: $*" >&2; }

dry_run=0
# Print a command (shell-quoted) in a dry run, run it otherwise.
run() {
	if [[ $dry_run == 1 ]]; then
		printf '+'
		printf ' %q' "$@"
		printf '\n'
	else
		"$@"
	fi
}

need_value() {
	[[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"
}

check_label() {
	[[ $label =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
		usage_error "--label must be a reverse-DNS name such as local.deepspeech.stt, got '$label'"
}

# Set plist_dir, plist, domain, service and (unless --log-dir gave it) log_dir for a LaunchDaemon ($system 1)
# or the user's LaunchAgent; a daemon needs sudo, an agent must not run under it. $1 says what happens to the
# job ("installed in", "removed from").
job_location() {
	if [[ $system == 1 ]]; then
		plist_dir=/Library/LaunchDaemons
		domain=system
		[[ -n $log_dir ]] || log_dir=/Library/Logs/$label
		if [[ $dry_run == 0 && $EUID -ne 0 ]]; then
			die "a LaunchDaemon is $1 /Library/LaunchDaemons: run it with sudo: sudo launchd/$prog --system ..."
		fi
	else
		if [[ $EUID -eq 0 && -n ${SUDO_USER:-} ]]; then
			die "a LaunchAgent belongs to the logged-in user: run it without sudo (or pass --system for a LaunchDaemon)"
		fi
		plist_dir=$HOME/Library/LaunchAgents
		domain=gui/$(id -u)
		[[ -n $log_dir ]] || log_dir=$HOME/Library/Logs/$label
	fi
	plist=$plist_dir/$label.plist
	service=$domain/$label
}

# Boot the job out if it is loaded ("not loaded" is fine) and wait up to 40 s for launchd to let it go.
# Returns 1 if it was not loaded, 2 if it is still loaded after the wait.
stop_job() {
	launchctl print "$service" >/dev/null 2>&1 || return 1
	echo "stopping $service"
	launchctl bootout "$service" 2>/dev/null || true
	for _ in $(seq 1 40); do
		launchctl print "$service" >/dev/null 2>&1 || return 0
		sleep 1
	done
	return 2
}
