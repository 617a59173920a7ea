#!/bin/bash
# Stop and remove the speech-to-text launchd job that launchd/install.sh installed. Idempotent: removing a job
# that is not there succeeds. Logs are kept unless --remove-logs. --dry-run prints every action without doing it.
# Written for the bash 3.2 that macOS ships in /bin/bash.
set -euo pipefail

prog=uninstall.sh

usage() {
	cat <<EOF
usage: launchd/uninstall.sh [options]

Stops the launchd job and removes its plist.

  --label LABEL   launchd label (default local.deepspeech.stt)
  --system        remove the LaunchDaemon from /Library/LaunchDaemons (needs sudo) instead of the LaunchAgent
  --log-dir DIR   the log directory install.sh used, for --remove-logs (default ~/Library/Logs/LABEL, or
                  /Library/Logs/LABEL with --system)
  --remove-logs   delete the log directory too
  --dry-run       print what would be done without doing it
  -h, --help      this help
EOF
}

# shellcheck source=launchd/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

label=local.deepspeech.stt
system=0
log_dir=
remove_logs=0

while [[ $# -gt 0 ]]; do
	case $1 in
	--label) need_value "$@"; label=$2; shift 2 ;;
	--log-dir) need_value "$@"; log_dir=$2; shift 2 ;;
	--system) system=1; shift ;;
	--remove-logs) remove_logs=1; shift ;;
	--dry-run) dry_run=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage_error "unknown option '$1'" ;;
	esac
done

check_label

job_location "removed from"

if [[ $dry_run == 0 ]] && ! command -v launchctl >/dev/null; then
	die "launchctl not found: this removes a macOS launchd job (use --dry-run to see what it would do)"
fi

if [[ $dry_run == 1 ]]; then
	echo "# dry run: nothing is changed. Removing $service"
	echo "+ launchctl bootout $service   # only if loaded; 'not loaded' is ignored"
else
	status=0
	stop_job || status=$?
	case $status in
	1) echo "$service is not loaded" ;;
	2) die "$service is still loaded; see: launchctl print $service" ;;
	esac
fi

if [[ $dry_run == 1 || -e $plist ]]; then
	run rm -f "$plist"
else
	echo "$plist is not there"
fi
if [[ $remove_logs == 1 ]]; then
	case ${log_dir%/} in
	"" | "$HOME" | /Library/Logs | "$HOME/Library/Logs") die "refusing to delete $log_dir" ;;
	esac
	run rm -rf "$log_dir"
elif [[ $dry_run == 0 && -d $log_dir ]]; then
	echo "kept the logs in $log_dir (--remove-logs deletes them)"
fi
if [[ $dry_run == 1 ]]; then
	echo "would remove $service"
else
	echo "removed $service"
fi
