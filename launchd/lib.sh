# shellcheck shell=bash
# The variables read here (prog, label, system, log_dir) belong to the sourcing script, and those set here are
# for it (plist_dir, plist, domain, service): shellcheck cannot see across the `source`.
# shellcheck disable=SC2154,SC2034
# Shared by install.sh and uninstall.sh (sourced; written for the bash 3.2 that macOS ships): messages, the
# dry-run runner, option values, where a job lives, and which folders a job cannot read. The sourcing script sets
# $prog first.

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

# macOS privacy protection (TCC) keeps a process out of these folders unless someone granted it access in a
# dialog, and a launchd job has nobody to ask: the service would die at start with "Operation not permitted".
# Other users' homes count too, since a daemon's --user need not be the one whose HOME this is. (The patterns are
# kept in variables: bash 3.2 and later bashes disagree about quoting inside =~.)
other_home_folder='^/Users/[^/]+/(Documents|Desktop|Downloads)(/|$)'
other_icloud='^/Users/[^/]+/Library/Mobile Documents(/|$)'
# Print which protected place the resolved path $1 is in (nothing if none); $2 is the resolved home directory.
protected_place() {
	local path=$1 home=$2 sub
	for sub in Documents Desktop Downloads; do
		if [[ $path == "$home/$sub" || $path == "$home/$sub/"* ]]; then
			printf '%s/%s' '~' "$sub" # the words the user knows, not the expanded path
			return
		fi
	done
	if [[ $path == "$home/Library/Mobile Documents" || $path == "$home/Library/Mobile Documents/"* ]]; then
		printf '%s' "iCloud Drive (~/Library/Mobile Documents)"
	elif [[ $path =~ $other_home_folder ]]; then
		printf '%s' "/Users/.../${BASH_REMATCH[1]}"
	elif [[ $path =~ $other_icloud ]]; then
		printf '%s' "iCloud Drive (/Users/.../Library/Mobile Documents)"
	elif [[ $path == /Volumes/* ]]; then
		printf '%s' "an external volume (/Volumes/...)"
	fi
}
