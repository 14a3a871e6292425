#!/usr/bin/env bash
# Set up (or update) an edgecc worker on a Raspberry Pi OS / Debian board. Run as root.
# Idempotent: a second run with the same inputs changes nothing except restarting the service.
# Expects edgecc-worker.service and worker.env.example next to this script
# (./run.sh deploy copies all three; by hand: scp the workers/ folder and a wheel).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: sudo ./setup-pi.sh [options] PACKAGE

  PACKAGE            the edgecc wheel or sdist to install (a file path)
  --bundle FILE      model bundle (from `edgecc export`) to install as /opt/edgecc/bundle.safetensors
  --token-file FILE  install this shared token as /etc/edgecc/token, replacing a different one;
                     without it an existing token is kept, or a new random one is generated
  --port P           listen on port P (rewrites the port of EDGECC_LISTEN in /etc/edgecc/worker.env)
  --no-restart       install and enable the service, but leave (re)starting it to the caller
  --dry-run          print the commands that would change the system instead of running them
EOF
}

readonly PREFIX=/opt/edgecc
readonly VENV=$PREFIX/venv
readonly ETC=/etc/edgecc
readonly UNIT=edgecc-worker.service
readonly UNIT_DIR=/etc/systemd/system
readonly SVC_USER=edgecc
# Debian builds where they exist (no compiling on the Pi); safetensors comes from pip
# (piwheels on Raspberry Pi OS), into a venv that also sees these system packages.
readonly APT_PACKAGES=(python3 python3-venv python3-numpy python3-msgpack python3-click python3-threadpoolctl python3-uvloop)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf '==> %s\n' "$*"; }
warn() { printf 'setup-pi: warning: %s\n' "$*" >&2; }
die() { printf 'setup-pi: error: %s\n' "$*" >&2; exit 1; }

# Run a command that changes the system, or with --dry-run only show it.
run() {
    if ((DRY_RUN)); then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

# --- arguments ---------------------------------------------------------------------------
DRY_RUN=0 RESTART=1 PACKAGE='' BUNDLE='' TOKEN_SRC='' PORT=''
while (($#)); do
    case $1 in
        --bundle|--token-file|--port)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --bundle) BUNDLE=$2 ;;
                --token-file) TOKEN_SRC=$2 ;;
                --port) PORT=$2 ;;
            esac
            shift 2 ;;
        --no-restart) RESTART=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) [[ -z $PACKAGE ]] || die "only one PACKAGE, got '$PACKAGE' and '$1'"
           PACKAGE=$1; shift ;;
    esac
done
[[ -n $PACKAGE ]] || { usage >&2; die "missing PACKAGE (the edgecc wheel or sdist to install)"; }
[[ -f $PACKAGE ]] || die "package not found: $PACKAGE"
# absolute, so pip always reads it as a file and never as a requirement name
PACKAGE=$(cd "$(dirname "$PACKAGE")" && pwd)/$(basename "$PACKAGE")
[[ -z $BUNDLE || -f $BUNDLE ]] || die "bundle not found: $BUNDLE"
[[ -z $TOKEN_SRC || -s $TOKEN_SRC ]] || die "token file missing or empty: $TOKEN_SRC"
if [[ -n $PORT ]]; then
    [[ $PORT =~ ^[0-9]{1,5}$ ]] && ((10#$PORT >= 1 && 10#$PORT <= 65535)) || die "bad port: $PORT"
    PORT=$((10#$PORT))
fi
for f in "$HERE/$UNIT" "$HERE/worker.env.example"; do
    [[ -f $f ]] || die "$f not found (keep setup-pi.sh next to the files from workers/)"
done
if ((DRY_RUN)); then
    say "dry run: nothing is changed"
else
    ((EUID == 0)) || die "run as root: sudo $0 ..."
    command -v apt-get >/dev/null || die "apt-get not found: this script is for Raspberry Pi OS / Debian"
fi

# --- 1. Debian packages (only the missing ones, so a rerun needs no network) -----------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    say "Debian packages already installed"
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    msg="edgecc needs Python >= 3.11 (Raspberry Pi OS bookworm or later); python3 is: $(python3 --version 2>&1 || echo missing)"
    if ((DRY_RUN)); then warn "$msg"; else die "$msg"; fi
fi

# --- 2. service user (no login, no home of its own besides systemd's StateDirectory) ---------
if id -u "$SVC_USER" >/dev/null 2>&1; then
    say "user $SVC_USER exists"
else
    say "creating system user $SVC_USER"
    run useradd --system --user-group --home-dir /var/lib/edgecc --no-create-home \
        --shell /usr/sbin/nologin "$SVC_USER"
fi
run install -d -m 0755 -o root -g root "$PREFIX"
run install -d -m 0750 -o root -g "$SVC_USER" "$ETC"   # the worker may read, not change, its config

# --- 3. venv with the system numpy/msgpack/click/uvloop visible ------------------------------
if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    say "venv $VENV exists"
else
    # --clear: a venv left broken (e.g. by a Python upgrade) is rebuilt rather than patched
    say "creating venv $VENV"
    run python3 -m venv --clear --system-site-packages "$VENV"
fi

# --- 4. the edgecc package ------------------------------------------------------------------
# A redeploy often ships the same version number with new code, which plain `pip install`
# would skip as "already satisfied". So: reinstall edgecc itself when the file changed
# (--no-deps, so pip never replaces the Debian numpy with a wheel), then let pip add any
# dependency the system packages do not satisfy (e.g. safetensors).
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
stamp=$PREFIX/.package.sha256
sum=$(sha256sum "$PACKAGE" | cut -d' ' -f1)
if [[ -r $stamp && $(<"$stamp") == "$sum" ]]; then
    say "edgecc package unchanged ($(basename "$PACKAGE"))"
else
    say "installing $(basename "$PACKAGE")"
    run "${pip[@]}" install --no-deps --force-reinstall "$PACKAGE"
fi
run "${pip[@]}" install "$PACKAGE"
if ((DRY_RUN)); then
    printf '+ echo %s > %s\n' "$sum" "$stamp"
else
    printf '%s\n' "$sum" >"$stamp"
fi

# --- 5. model bundle --------------------------------------------------------------------------
bundle_dest=$PREFIX/bundle.safetensors
if [[ -n $BUNDLE ]]; then
    if [[ -f $bundle_dest ]] && cmp -s "$BUNDLE" "$bundle_dest"; then
        say "bundle unchanged"
    else
        say "installing bundle $bundle_dest"
        # copy then rename, so a running worker never sees a half-written file
        run install -m 0640 -o root -g "$SVC_USER" "$BUNDLE" "$bundle_dest.new"
        run mv -f "$bundle_dest.new" "$bundle_dest"
    fi
elif [[ ! -f $bundle_dest ]]; then
    warn "no bundle at $bundle_dest yet: the worker will not start until you rerun with --bundle FILE"
fi

# --- 6. systemd unit (ours: always replaced; local changes belong in `systemctl edit`) -------
if [[ -f $UNIT_DIR/$UNIT ]] && cmp -s "$HERE/$UNIT" "$UNIT_DIR/$UNIT"; then
    say "unit $UNIT unchanged"
else
    say "installing $UNIT_DIR/$UNIT"
    run install -m 0644 -o root -g root "$HERE/$UNIT" "$UNIT_DIR/$UNIT"
fi

# --- 7. settings (the admin's: never overwritten, only the port on request) ------------------
env_file=$ETC/worker.env
if [[ -e $env_file ]]; then
    say "keeping existing $env_file"
else
    say "installing $env_file"
    run install -m 0640 -o root -g "$SVC_USER" "$HERE/worker.env.example" "$env_file"
fi
if [[ -n $PORT ]]; then
    if grep -qE "^EDGECC_LISTEN=.*:$PORT\$" "$env_file" 2>/dev/null; then
        say "already listening on port $PORT"
    elif [[ ! -e $env_file ]] || grep -q '^EDGECC_LISTEN=' "$env_file"; then
        say "setting the port in $env_file to $PORT"
        # keep the host part, replace only the port after the last colon
        run sed -i -E "s/^(EDGECC_LISTEN=.*):[0-9]+\$/\\1:$PORT/" "$env_file"
    else
        say "adding EDGECC_LISTEN=0.0.0.0:$PORT to $env_file"
        if ((DRY_RUN)); then
            printf '+ echo EDGECC_LISTEN=0.0.0.0:%s >> %s\n' "$PORT" "$env_file"
        else
            printf 'EDGECC_LISTEN=0.0.0.0:%s\n' "$PORT" >>"$env_file"
        fi
    fi
fi

# --- 8. shared token (readable only by the worker) --------------------------------------------
token=$ETC/token
if [[ -n $TOKEN_SRC ]]; then
    if [[ -f $token ]] && cmp -s "$TOKEN_SRC" "$token"; then
        say "token unchanged"
    else
        say "installing the shared token from $TOKEN_SRC"
        run install -m 0600 -o "$SVC_USER" -g "$SVC_USER" "$TOKEN_SRC" "$token"
    fi
elif [[ -s $token ]]; then
    say "keeping existing token $token"
else
    say "generating a new token in $token: copy it to the master and the other workers (see README)"
    if ((DRY_RUN)); then
        printf '+ %s\n' "od -An -vtx1 -N32 /dev/urandom | tr -d ' \\n' > $token"
    else
        # 32 random bytes as 64 hex digits, no trailing newline; the value is never
        # passed as an argument, so it does not show up in `ps`.
        hex=$(od -An -vtx1 -N32 /dev/urandom | tr -d ' \n')
        ((${#hex} == 64)) || die "could not read 32 random bytes from /dev/urandom"
        (umask 077 && printf '%s' "$hex" >"$token")
        unset hex
    fi
fi
# Enforce owner and mode every time: this also repairs a token copied in by hand.
run chown "$SVC_USER:$SVC_USER" "$token"
run chmod 0600 "$token"

# --- 9. systemd ------------------------------------------------------------------------------
run systemctl daemon-reload
run systemctl enable "$UNIT"
if ((RESTART)); then
    say "restarting $UNIT"
    run systemctl restart "$UNIT"
fi
say "done. Status: systemctl status ${UNIT%.service}; logs: journalctl -u ${UNIT%.service} -f"
