#!/bin/bash
# Install (or reinstall) the speech-to-text service as a launchd job on macOS: a LaunchAgent for the current user
# by default (no sudo; runs while that user is logged in), or with --system a LaunchDaemon (sudo; starts at boot).
# Re-running replaces the job. --dry-run prints every action, and the rendered plist, without doing anything.
# Written for the bash 3.2 that macOS ships in /bin/bash.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true

prog=install.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
template="$here/local.deepspeech.stt.plist.in"

usage() {
	cat <<EOF
usage: launchd/install.sh [options]

Installs the service (VENV/bin/python -m app, run in $repo) as a launchd job and starts it.
Re-running replaces the installed job (use it after changing options or the model).
The checkout, the virtualenv and the model must not be in ~/Documents, ~/Desktop, ~/Downloads, iCloud Drive or
on an external volume (/Volumes): macOS privacy protection keeps launchd jobs out of those.

  --host HOST         address to listen on (default 127.0.0.1; 0.0.0.0 for the whole network)
  --port PORT         port (default 8000)
  --model-dir DIR     model directory with manifest.json (default \$DS_MODEL_DIR, else $repo/models/default)
  --wyoming URI       also serve Home Assistant's Wyoming protocol there, e.g. tcp://127.0.0.1:10300
                      (tcp://0.0.0.0:10300 for Home Assistant on another machine: Wyoming has no
                      authentication, so only on a network you trust)
  --zeroconf NAME     with --wyoming tcp://...: advertise it over mDNS as NAME so Home Assistant finds it
                      (needs the zeroconf extra: VENV/bin/pip install '.[zeroconf]')
  --redis URL         Redis for batch jobs (/jobs), e.g. redis://mac-mini.local:6379/0 (DS_REDIS_URL)
  --worker            install a batch-job worker (python -m app.worker: no HTTP, takes jobs from --redis)
                      instead of the service; its default label is local.deepspeech.stt-worker
  --env KEY=VALUE     an environment variable for the service, e.g. --env DS_BEAM_WIDTH=100 (repeatable);
                      DS_* variables set in this shell are passed through too
  --label LABEL       launchd label (default local.deepspeech.stt)
  --system            install a LaunchDaemon in /Library/LaunchDaemons (starts at boot; needs sudo)
                      instead of a LaunchAgent in ~/Library/LaunchAgents (runs while you are logged in)
  --user NAME         with --system: the user the daemon runs as (default: the user who ran sudo); it must
                      be able to read the checkout, the virtualenv and the model (checked with sudo -u NAME)
  --log-dir DIR       where stdout.log and stderr.log go (default ~/Library/Logs/LABEL, or
                      /Library/Logs/LABEL with --system)
  --venv DIR          the virtualenv (default $repo/.venv)
  --wait SECONDS      how long to wait for /health to answer after starting (default 30; 0: do not wait)
  --dry-run           print what would be done, and the plist, without doing it
  -h, --help          this help
EOF
}

# shellcheck source=launchd/lib.sh
source "$here/lib.sh"

xml_escape() {
	local s=$1
	s=${s//&/&amp;}
	s=${s//</&lt;}
	s=${s//>/&gt;}
	printf '%s' "$s"
}

# An absolute path for DIR without resolving symlinks (so a models/current link can be repointed later).
absolute_dir() {
	(cd "$1" 2>/dev/null && pwd) || return 1
}

# DIR with every symlink resolved: where the files really are, which is what macOS's privacy checks look at.
physical_dir() {
	(cd "$1" 2>/dev/null && pwd -P) || return 1
}

# Refuse WHAT (the checkout, ...) at PATH if it really lives in a protected place; FIX says what to do instead.
refuse_protected() {
	local what=$1 path=$2 fix=$3 real home place shown
	real=$(physical_dir "$path") || return 0
	home=$(physical_dir "$HOME") || home=$HOME
	place=$(protected_place "$real" "$home")
	[[ -n $place ]] || return 0
	shown=$path
	[[ $real == "$path" ]] || shown="$path (really $real)"
	die "$what $shown is in $place, which macOS privacy protection (TCC) keeps launchd jobs out of: $fix"
}

host=${DS_HOST:-127.0.0.1}
port=${DS_PORT:-8000}
model_dir=
wyoming=${DS_WYOMING_URI:-}
redis=${DS_REDIS_URL:-}
worker=0
zeroconf=${DS_WYOMING_ZEROCONF:-}
label=local.deepspeech.stt
system=0
user=
log_dir=
venv="$repo/.venv"
wait_s=30
# Never empty (bash 3.2 treats "${empty[@]}" as unset under set -u); --env PYTHONUNBUFFERED=0 overrides it.
env_keys=(PYTHONUNBUFFERED)
env_values=(1)

# Set KEY to VALUE in the environment lists, replacing an earlier value.
set_env() {
	local i
	for ((i = 0; i < ${#env_keys[@]}; i++)); do
		if [[ ${env_keys[i]} == "$1" ]]; then
			env_values[i]=$2
			return
		fi
	done
	env_keys+=("$1")
	env_values+=("$2")
}

check_env_value() {
	if [[ $2 == *[[:cntrl:]]* ]]; then
		usage_error "the value of $1 must be one line of printable text"
	fi
}

# DS_* settings from this shell, before --env so that --env wins.
while IFS= read -r name; do
	[[ $name == DS_MODEL_DIR ]] && continue
	check_env_value "$name" "${!name}"
	set_env "$name" "${!name}"
done < <(compgen -e | grep '^DS_' | LC_ALL=C sort || true)

while [[ $# -gt 0 ]]; do
	case $1 in
	--host) need_value "$@"; host=$2; shift 2 ;;
	--port) need_value "$@"; port=$2; shift 2 ;;
	--model-dir) need_value "$@"; model_dir=$2; shift 2 ;;
	--wyoming) need_value "$@"; wyoming=$2; shift 2 ;;
	--redis) need_value "$@"; redis=$2; shift 2 ;;
	--worker) worker=1; shift ;;
	--zeroconf) need_value "$@"; zeroconf=$2; shift 2 ;;
	--label) need_value "$@"; label=$2; shift 2 ;;
	--user) need_value "$@"; user=$2; shift 2 ;;
	--log-dir) need_value "$@"; log_dir=$2; shift 2 ;;
	--venv) need_value "$@"; venv=$2; shift 2 ;;
	--wait) need_value "$@"; wait_s=$2; shift 2 ;;
	--env)
		need_value "$@"
		[[ $2 == *=* ]] || usage_error "--env needs KEY=VALUE, got '$2'"
		key=${2%%=*}
		value=${2#*=}
		[[ $key =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || usage_error "--env: '$key' is not an environment variable name"
		[[ $key != DS_MODEL_DIR ]] || usage_error "use --model-dir DIR instead of --env DS_MODEL_DIR=DIR"
		[[ $key != DS_HOST && $key != DS_PORT ]] || usage_error "use --host/--port instead of --env $key=..."
		check_env_value "$key" "$value"
		set_env "$key" "$value"
		shift 2
		;;
	--system) system=1; shift ;;
	--dry-run) dry_run=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) usage_error "unknown option '$1'" ;;
	esac
done

# --- validate ---------------------------------------------------------------------------------------------------
if ! [[ $port =~ ^[0-9]{1,5}$ ]] || ((10#$port < 1 || 10#$port > 65535)); then
	usage_error "--port must be a number from 1 to 65535, got '$port'"
fi
port=$((10#$port))
[[ $wait_s =~ ^[0-9]{1,4}$ ]] || usage_error "--wait must be a number of seconds, got '$wait_s'"
wait_s=$((10#$wait_s))
[[ $host =~ ^[A-Za-z0-9.:_-]+$ ]] || usage_error "--host must be an address or host name, got '$host'"
if [[ $worker == 1 && $label == local.deepspeech.stt ]]; then label=local.deepspeech.stt-worker; fi
check_label
if [[ -n $redis ]] && ! [[ $redis =~ ^rediss?://[^[:space:]]+$ ]]; then
	usage_error "--redis must be redis://HOST:PORT/DB (or rediss:// for TLS), got '$redis'"
fi
[[ $worker == 0 || -n $redis ]] || usage_error "--worker needs --redis URL: workers take their jobs from it"
[[ $worker == 0 || -z $wyoming ]] || usage_error "--wyoming is the service's, not a worker's"
if [[ -n $wyoming ]] && ! [[ $wyoming =~ ^tcp://[A-Za-z0-9.:_-]+:[0-9]{1,5}$ || $wyoming =~ ^unix:///[^[:space:]]+$ ]]; then
	usage_error "--wyoming must be tcp://HOST:PORT or unix:///PATH, got '$wyoming'"
fi
if [[ -n $zeroconf ]]; then
	[[ $wyoming == tcp://* ]] || usage_error "--zeroconf needs --wyoming tcp://HOST:PORT"
	[[ $zeroconf =~ ^[A-Za-z0-9_-]{1,63}$ ]] || usage_error "--zeroconf NAME: letters, digits, - and _ (at most 63)"
fi
[[ $system == 1 || -z $user ]] || usage_error "--user is only for --system (an agent runs as you)"
[[ -f $template ]] || die "the template $template is missing"

venv_abs=$(absolute_dir "$venv") ||
	die "no virtualenv at $venv: run 'make venv' (or 'make serve' once) in $repo"
python="$venv_abs/bin/python"
[[ -x $python && -x $venv_abs/bin/uvicorn ]] ||
	die "$venv_abs has no python or uvicorn: run 'make venv' (or 'make serve' once) in $repo"

if [[ -z $model_dir ]]; then
	model_dir=${DS_MODEL_DIR:-$repo/models/default}
fi
model_abs=$(absolute_dir "$model_dir") ||
	die "no model directory at $model_dir: run 'make serve' once (it builds models/default) or convert one with scripts/convert.py"
[[ -f $model_abs/manifest.json ]] ||
	die "$model_abs has no manifest.json: run 'make serve' once (it builds models/default) or convert a model into it with scripts/convert.py"

refuse_protected "the checkout" "$repo" \
	"clone it somewhere else (for example ~/src/stt, or /usr/local/stt for a daemon), run 'make venv' there and install from there"
refuse_protected "the virtualenv" "$venv_abs" "make it outside (run 'make venv' in a checkout elsewhere) and pass --venv"
refuse_protected "the model directory" "$model_abs" "move or copy it (for example into $repo/models/) and pass --model-dir"

if [[ $system == 1 ]]; then
	[[ -n $user ]] || user=${SUDO_USER:-$(id -un)}
	id -u "$user" >/dev/null 2>&1 || usage_error "--user: no user named '$user'"
	[[ $(id -u "$user") != 0 ]] || warn "the daemon will run as root; pass --user NAME to run it as an ordinary user"
fi
job_location "installed in"
case $log_dir in
/*) ;;
*) log_dir=$PWD/$log_dir ;;
esac
stdout_log=$log_dir/stdout.log
stderr_log=$log_dir/stderr.log

if [[ $dry_run == 0 ]] && ! command -v launchctl >/dev/null; then
	die "launchctl not found: this installs a macOS launchd job (use --dry-run to see what it would do)"
fi

# --- render -----------------------------------------------------------------------------------------------------
set_env DS_HOST "$host"
set_env DS_PORT "$port"
[[ -z $wyoming ]] || set_env DS_WYOMING_URI "$wyoming"
[[ -z $redis ]] || set_env DS_REDIS_URL "$redis"
module=app
[[ $worker == 0 ]] || module=app.worker
[[ -z $zeroconf ]] || set_env DS_WYOMING_ZEROCONF "$zeroconf"
# launchd starts jobs with PATH=/usr/bin:/bin:/usr/sbin:/sbin; add the venv and Homebrew.
has_path=0
for k in "${env_keys[@]}"; do
	if [[ $k == PATH ]]; then has_path=1; fi
done
[[ $has_path == 1 ]] || set_env PATH "$venv_abs/bin:/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

render() {
	local line indent i
	while IFS= read -r line || [[ -n $line ]]; do
		case $line in
		*@ENVIRONMENT@*)
			indent=${line%%@ENVIRONMENT@*}
			printf '%s<key>DS_MODEL_DIR</key>\n%s<string>%s</string>\n' "$indent" "$indent" "$(xml_escape "$model_abs")"
			for ((i = 0; i < ${#env_keys[@]}; i++)); do
				printf '%s<key>%s</key>\n%s<string>%s</string>\n' "$indent" "${env_keys[i]}" "$indent" \
					"$(xml_escape "${env_values[i]}")"
			done
			;;
		*@DAEMON_KEYS@*)
			if [[ $system == 1 ]]; then
				indent=${line%%@DAEMON_KEYS@*}
				printf '%s<key>UserName</key>\n%s<string>%s</string>\n' "$indent" "$indent" "$(xml_escape "$user")"
				printf '%s<key>InitGroups</key>\n%s<true/>\n' "$indent" "$indent"
			fi
			;;
		*)
			line=${line//@LABEL@/$(xml_escape "$label")}
			line=${line//@PYTHON@/$(xml_escape "$python")}
			line=${line//@MODULE@/$module}
			line=${line//@REPO@/$(xml_escape "$repo")}
			line=${line//@STDOUT@/$(xml_escape "$stdout_log")}
			line=${line//@STDERR@/$(xml_escape "$stderr_log")}
			printf '%s\n' "$line"
			;;
		esac
	done <"$template"
}

rendered=$(render)
if [[ $rendered =~ @[A-Z_]+@ ]]; then
	die "the template has a placeholder install.sh does not fill: ${BASH_REMATCH[0]}"
fi

# A plist holding a key or password is readable only by its owner.
mode=644
for k in "${env_keys[@]}"; do
	case $k in *KEY* | *TOKEN* | *SECRET* | *PASSWORD*) mode=600 ;; esac
done

# --- install ----------------------------------------------------------------------------------------------------
if [[ $dry_run == 1 ]]; then
	echo "# dry run: nothing is changed. Installing $service"
	[[ $system == 0 || $EUID -eq 0 ]] || echo "# (a LaunchDaemon: the real run needs sudo)"
fi

# The daemon runs as $user, not as whoever runs this script: check, as that user, that it can enter the checkout,
# run the virtualenv's Python and read the model (a home directory is often closed to other users).
# In a dry run the checks are printed, and run as well where sudo needs no password (as root: they change nothing).
checks_as_user=0
if [[ $system == 1 && $(id -u "$user") != 0 ]]; then
	checks_as_user=1
	if [[ $dry_run == 0 ]]; then
		command -v sudo >/dev/null || die "sudo not found: it is needed to check what the daemon's user '$user' can read"
		can_switch=1
	elif command -v sudo >/dev/null && sudo -n -u "$user" true 2>/dev/null; then
		can_switch=1
	else
		can_switch=0
	fi
fi

# `test FLAG PATH` as the daemon's user, or refuse with WHAT it could not do; ONLY_PRINT=1 in a dry run: only print.
check_as_user() {
	local flag=$1 path=$2 what=$3 only_print=${4:-0}
	if [[ $dry_run == 1 ]]; then
		printf '+ sudo -n -u %q test %s %q\n' "$user" "$flag" "$path"
		[[ $can_switch == 1 && $only_print == 0 ]] || return 0
	fi
	sudo -n -u "$user" test "$flag" "$path" ||
		die "the daemon's user '$user' cannot $what ('sudo -u $user test $flag $path' fails): give it access (chmod o+rX on the first directory it cannot enter, and below; a home folder is often closed to other users), move the checkout, or run it as the owner with --user NAME"
}

if [[ $checks_as_user == 1 ]]; then
	[[ $dry_run == 0 || $can_switch == 1 ]] || echo "# (these checks run for real under sudo)"
	check_as_user -x "$repo" "enter the checkout $repo"
	check_as_user -r "$repo/app/__main__.py" "read the service's code in $repo/app"
	check_as_user -x "$python" "run the virtualenv's Python $python"
	check_as_user -r "$venv_abs/pyvenv.cfg" "read the virtualenv $venv_abs"
	check_as_user -r "$model_abs/manifest.json" "read the model directory $model_abs"
fi

new_log_dir=0
[[ -d $log_dir ]] || new_log_dir=1
run mkdir -p "$plist_dir" "$log_dir"
if [[ $system == 1 ]]; then
	# The daemon runs as $user and must be able to write its logs (a directory that was already there is left as is).
	[[ $new_log_dir == 0 ]] || run chown "$user" "$log_dir"
	run touch "$stdout_log" "$stderr_log"
	run chown "$user" "$stdout_log" "$stderr_log"
fi
if [[ $checks_as_user == 1 ]]; then
	# A log directory that was already there is left as is, and launchd opens the files as the job's user.
	check_as_user -w "$stdout_log" "write its log $stdout_log" 1
	check_as_user -w "$stderr_log" "write its log $stderr_log" 1
fi

tmp_plist="$plist.tmp.$$"
if [[ $dry_run == 1 ]]; then
	echo "+ write $plist (mode $mode):"
	echo "----- BEGIN $plist -----"
	printf '%s\n' "$rendered"
	echo "----- END $plist -----"
else
	trap 'rm -f "$tmp_plist"' EXIT
	(umask 077 && printf '%s\n' "$rendered" >"$tmp_plist")
	chmod "$mode" "$tmp_plist"
	if command -v plutil >/dev/null; then
		lint=$(plutil -lint "$tmp_plist" 2>&1) || die "plutil -lint rejects the rendered plist: ${lint//$'\n'/ }"
	fi
fi

# Replace a loaded job: bootout ("not loaded" is fine), wait until launchd has let go, then bootstrap.
if [[ $dry_run == 1 ]]; then
	echo "+ launchctl bootout $service   # only if loaded; 'not loaded' is ignored"
else
	stop_job || true # bootstrap below reports a job launchd still holds
fi
if [[ $dry_run == 0 ]]; then
	mv -f "$tmp_plist" "$plist"
	trap - EXIT
	[[ $system == 0 ]] || chown root:wheel "$plist"
fi
run launchctl enable "$service"
if [[ $dry_run == 1 ]]; then
	run launchctl bootstrap "$domain" "$plist"
elif ! launchctl bootstrap "$domain" "$plist"; then
	hint=
	[[ $system == 1 ]] || hint="; a LaunchAgent needs you logged in at the Mac's screen (over SSH use sudo launchd/install.sh --system)"
	die "launchctl bootstrap $domain $plist failed: see $stderr_log and launchctl print $service$hint"
fi

# --- report -----------------------------------------------------------------------------------------------------
case $host in 0.0.0.0 | :: | "[::]") local_host=127.0.0.1 ;; *) local_host=$host ;; esac
url="http://$local_host:$port"
if [[ $dry_run == 0 && $wait_s -gt 0 && $worker == 0 ]] && command -v curl >/dev/null; then
	echo "waiting up to ${wait_s}s for $url/health ..."
	ok=0
	for _ in $(seq 1 "$wait_s"); do
		if curl -fsS -m 2 "$url/health" >/dev/null 2>&1; then
			ok=1
			break
		fi
		sleep 1
	done
	if [[ $ok == 1 ]]; then
		echo "the service answers at $url"
	else
		warn "$url/health does not answer yet (loading can take a while the first time); read $stderr_log"
	fi
fi
sudo_prefix=
[[ $system == 0 ]] || sudo_prefix="sudo "
done_word=installed
[[ $dry_run == 0 ]] || done_word="would install"
serving="serving: $url"
[[ $worker == 0 ]] || serving="jobs:    from $redis"
cat <<EOF
$done_word $service
  plist:   $plist
  model:   $model_abs
  $serving
  logs:    $stdout_log
           $stderr_log
  status:  ${sudo_prefix}launchctl print $service
  restart: ${sudo_prefix}launchctl kickstart -k $service
  remove:  ${sudo_prefix}$here/uninstall.sh$([[ $system == 0 ]] || echo " --system")$([[ $label == local.deepspeech.stt ]] || echo " --label $label")
EOF
