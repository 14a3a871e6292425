#!/usr/bin/env bash
# edgecc project tasks:  ./run.sh COMMAND [ARGS...]   (./run.sh help)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DRY_RUN=0
# What the EXIT trap cleans up if deploy stops half-way (see cleanup).
DEPLOY_TMP_TOKEN='' DEPLOY_STAGED=''
# ssh/scp for deploy; $EDGECC_SSH_CONFIG names an ssh_config file for both (e.g. a fleet's
# ports, users and keys) in place of ~/.ssh/config.
SSH=(ssh) SCP=(scp)
if [[ -n ${EDGECC_SSH_CONFIG:-} ]]; then SSH+=(-F "$EDGECC_SSH_CONFIG"); SCP+=(-F "$EDGECC_SSH_CONFIG"); fi

cleanup() {
    local rc=$?
    [[ -z $DEPLOY_TMP_TOKEN ]] || rm -f "$DEPLOY_TMP_TOKEN"
    if [[ -n $DEPLOY_STAGED ]]; then
        printf 'run.sh: error: deploy failed (exit %d) at the last `+` step above; removing %s\n' \
            "$rc" "$DEPLOY_STAGED" >&2
        # a failed deploy must not leave the token copy on the board
        "${SSH[@]}" "${DEPLOY_STAGED%%:*}" rm -rf "${DEPLOY_STAGED#*:}" || true
    fi
}
trap cleanup EXIT

usage() {
    cat <<'EOF'
usage: ./run.sh COMMAND [ARGS...]

commands:
  setup       create .venv and install edgecc with its test dependencies
  demo        setup, then run the default scenario (shipped model and images) and print the report
  test        setup, install the Fashion-MNIST Debian package if missing, run the tests
  scenario FILE... [--out DIR]
              run scenario files (see scenarios/)
  deploy USER@HOST --bundle BUNDLE [--wheel WHEEL] [--port PORT] [--dry-run]
              install or update an edgecc worker on a Raspberry Pi over ssh, then check
              that it answers the authenticated handshake (see workers/README.md)
  pi-test [PYTEST ARGS...]
              (root) install what it runs (qemu-user-static, mmdebstrap, podman, buildah,
              openssh-server) where missing, build the emulated arm64 Raspberry Pi stand-in and
              the container base once (cached in $EDGECC_PI_CACHE, default /var/cache/edgecc),
              then deploy into them for real: tests/test_pi_board.py and tests/test_container.py
  help        this text
EOF
}

# --- shared helpers --------------------------------------------------------------------------
say() { printf '==> %s\n' "$*"; }
die() { printf 'run.sh: error: %s\n' "$*" >&2; exit 1; }

# Print a command as `+ cmd args`, shell-quoted; run it unless --dry-run.
run() {
    printf '+'; printf ' %q' "$@"; printf '\n'
    ((DRY_RUN)) || "$@"
}

# The project's Python / edgecc: $PYTHON / $EDGECC_BIN, else the repo venv, else PATH.
python_bin() {
    if [[ -n ${PYTHON:-} ]]; then echo "$PYTHON"
    elif [[ -x $ROOT/.venv/bin/python ]]; then echo "$ROOT/.venv/bin/python"
    else echo python3
    fi
}
edgecc_bin() {
    if [[ -n ${EDGECC_BIN:-} ]]; then echo "$EDGECC_BIN"
    elif [[ -x $ROOT/.venv/bin/edgecc ]]; then echo "$ROOT/.venv/bin/edgecc"
    else command -v edgecc || echo edgecc
    fi
}

# Whether PROGRAM is here: a command name, an absolute path, or `python3 -m MODULE`.
have_program() {
    case $1 in
        # Debian's python3 has the venv module but not ensurepip, without which `-m venv` fails
        *' -m venv') "${1%% *}" -c 'import ensurepip' >/dev/null 2>&1 ;;
        *' -m '*) "${1%% *}" -c "import ${1##* }" >/dev/null 2>&1 ;;
        /*) [[ -x $1 ]] ;;
        *) command -v "$1" >/dev/null ;;
    esac
}

# need_programs TASK PROGRAM=PACKAGE...: the programs TASK runs that a Debian system may lack, each
# with the Debian package that has it, checked before the task does anything slow. What is missing
# is installed with apt-get when we are root (naming each package); otherwise the task stops here,
# on one line naming the programs and the packages, not minutes later half-way through.
# tests/test_run_sh_programs.py checks every task's list against the programs the task reaches.
need_programs() {
    local task=$1 entry prog pkg missing=() pkgs=()
    shift
    for entry in "$@"; do
        prog=${entry%=*} pkg=${entry##*=}
        have_program "$prog" && continue
        missing+=("$prog")
        [[ " ${pkgs[*]-} " == *" $pkg "* ]] || pkgs+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
        die "$task needs ${missing[*]}, not found here: install the Debian packages ${pkgs[*]} (sudo apt-get install -y ${pkgs[*]}; as root with apt-get, ./run.sh $task installs them itself)"
    fi
    local p
    for p in "${pkgs[@]}"; do say "$task: installing the Debian package $p"; done
    # a fresh machine may have no package lists yet: update once and retry
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >/dev/null; } \
        || die "$task: apt-get could not install ${pkgs[*]}"
    for prog in "${missing[@]}"; do
        have_program "$prog" || die "$task: $prog still not found after installing ${pkgs[*]}"
    done
    if [[ " ${pkgs[*]} " == *" openssh-server "* ]]; then
        say "note: Debian's openssh-server also enables ssh.service (logins on port 22);" \
            "$task only runs its sshd binary: 'systemctl disable --now ssh' turns that off"
    fi
}

# --- setup / demo / test / scenario ------------------------------------------------------------
# setup: a venv in .venv with edgecc and everything the tests need. torch is installed first and
# pinned (2.13.0): an unpinned torch pulls a multi-GB CUDA build on CPU-only machines.
cmd_setup() {
    local py=${PYTHON:-python3}
    # $PYTHON is the user's own interpreter: only Debian's python3 comes from Debian packages
    if [[ ! -x $ROOT/.venv/bin/python && -z ${PYTHON:-} ]]; then
        need_programs setup python3=python3 'python3 -m venv=python3-venv'
    fi
    command -v "$py" >/dev/null || die "$py not found (set PYTHON to a Python >= 3.11)"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "edgecc needs Python >= 3.11 ($py is older)"
    if [[ ! -x $ROOT/.venv/bin/python ]]; then
        say "creating $ROOT/.venv"
        "$py" -m venv "$ROOT/.venv"
    fi
    local vpy=$ROOT/.venv/bin/python
    if ! "$vpy" -c 'import torch' 2>/dev/null; then
        say "installing torch 2.13.0 (CPU)"
        "$vpy" -m pip install -q torch==2.13.0
    fi
    say "installing edgecc and its test dependencies"
    "$vpy" -m pip install -q -e "$ROOT[test,report]"
}

# The real Fashion-MNIST, for tests and training (the demo runs on the images shipped in the package).
ensure_dataset() {
    local dir=${EDGECC_DATA_DIR:-/usr/share/datasets/fashion-mnist}
    [[ -f $dir/t10k-images-idx3-ubyte.gz || -f $dir/t10k-images-idx3-ubyte ]] && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing the Debian package dataset-fashion-mnist"
        apt-get install -y -q dataset-fashion-mnist >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    else
        die "Fashion-MNIST not found in $dir: run 'sudo apt-get install -y dataset-fashion-mnist' or set EDGECC_DATA_DIR"
    fi
}

# The dashboard's browser test drives Debian's chromium (Playwright cannot download its own here).
# Installed when we can (root with apt); otherwise that one test skips and says why.
ensure_browser() {
    command -v chromium >/dev/null && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing the Debian package chromium (for the dashboard's browser test)"
        apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null 2>&1; } \
            || say "could not install chromium: the dashboard's browser test will skip"
    fi
}

# demo: the main job on the built-in default: the shipped model and images, N=3 workers with one straggler.
cmd_demo() {
    cmd_setup
    say "running scenarios/one-straggler.toml (3 local workers, shipped model, shipped images)"
    "$ROOT/.venv/bin/edgecc" scenario run "$ROOT/scenarios/one-straggler.toml" --out "$ROOT/out" "$@"
}

# test: the default test suite (a few minutes on 2 cores); extra arguments go to pytest.
cmd_test() {
    cmd_setup
    ensure_dataset
    ensure_browser
    cd "$ROOT" && "$ROOT/.venv/bin/python" -m pytest -q --durations=25 "$@"
}

# scenario FILE... [--out DIR]: run scenario files with the project's venv.
cmd_scenario() {
    [[ $# -gt 0 ]] || die "usage: ./run.sh scenario FILE... [--out DIR]"
    "$(edgecc_bin)" scenario run "$@"
}

deploy_usage() {
    cat <<'EOF'
usage: ./run.sh deploy USER@HOST --bundle BUNDLE [--wheel WHEEL] [--port PORT] [--dry-run]

  USER@HOST        ssh target of the board (a user with sudo); HOST must also be reachable
                   from here on PORT, since the final check connects to HOST:PORT directly
  --bundle BUNDLE  model bundle made with `edgecc export MODEL --out BUNDLE.safetensors`
  --wheel WHEEL    edgecc wheel (or sdist) to install; default: build one into dist/
  --port PORT      port the worker listens on (default 7700)
  --dry-run        print every step (`+ ` lines) without running any of them

$EDGECC_SSH_CONFIG: an ssh_config file that ssh and scp use instead of ~/.ssh/config.

The shared token comes from $EDGECC_TOKEN or the file $EDGECC_TOKEN_FILE; with neither,
~/.config/edgecc/token is used and created on first deploy. The same token is installed
on every board, and `edgecc ping` uses it for the final handshake check.
Rerunning is safe: it updates what changed and restarts the worker.
EOF
}

cmd_deploy() {
    local target='' bundle='' wheel='' port=7700
    while (($#)); do
        case $1 in
            --bundle|--wheel|--port)
                (($# >= 2)) || { deploy_usage >&2; die "$1 needs a value"; }
                case $1 in
                    --bundle) bundle=$2 ;;
                    --wheel) wheel=$2 ;;
                    --port) port=$2 ;;
                esac
                shift 2 ;;
            --bundle=*) bundle=${1#*=}; shift ;;
            --wheel=*) wheel=${1#*=}; shift ;;
            --port=*) port=${1#*=}; shift ;;
            --dry-run) DRY_RUN=1; shift ;;
            -h|--help) deploy_usage; exit 0 ;;
            -*) deploy_usage >&2; die "unknown option: $1" ;;
            *) [[ -z $target ]] || { deploy_usage >&2; die "only one USER@HOST, got '$target' and '$1'"; }
               target=$1; shift ;;
        esac
    done

    # --- check everything local before touching the board ---
    [[ -n $target ]] || { deploy_usage >&2; die "missing USER@HOST"; }
    [[ $target =~ ^([A-Za-z0-9._-]+@)?[A-Za-z0-9._:-]+$ ]] || die "bad target '$target' (expected USER@HOST)"
    local host=${target#*@}
    [[ -n $bundle ]] || { deploy_usage >&2; die "missing --bundle (make one with: edgecc export MODEL --out BUNDLE.safetensors)"; }
    [[ -f $bundle ]] || die "bundle not found: $bundle"
    [[ $port =~ ^[0-9]{1,5}$ ]] && ((10#$port >= 1 && 10#$port <= 65535)) || die "bad --port: $port"
    port=$((10#$port))
    if [[ -n $wheel ]]; then
        [[ -f $wheel ]] || die "wheel not found: $wheel"
        # the name travels into a remote shell command line and pip needs it intact
        [[ $(basename "$wheel") =~ ^[A-Za-z0-9._+-]+$ ]] || die "unexpected characters in wheel file name: $wheel"
    fi
    local f
    for f in setup-pi.sh edgecc-worker.service worker.env.example; do
        [[ -f $ROOT/workers/$f ]] || die "missing $ROOT/workers/$f"
    done
    local edgecc; edgecc=$(edgecc_bin)
    if ! ((DRY_RUN)); then
        [[ -z ${EDGECC_SSH_CONFIG:-} || -r $EDGECC_SSH_CONFIG ]] || die "EDGECC_SSH_CONFIG=$EDGECC_SSH_CONFIG is not a readable file"
        for f in ssh scp "$edgecc"; do
            command -v "$f" >/dev/null || die "'$f' not found (edgecc is needed locally for the final ping; set EDGECC_BIN or activate the venv)"
        done
    fi
    if ((DRY_RUN)); then say "dry run: printing the steps, running none of them"; fi

    # --- the shared token: the master's copy is the one every board gets ---
    local token_file
    if [[ -n ${EDGECC_TOKEN:-} ]]; then
        # scp needs a file; keep it private and remove it on exit
        if ((DRY_RUN)); then
            token_file=${TMPDIR:-/tmp}/edgecc-token.XXXXXX
        else
            DEPLOY_TMP_TOKEN=$(umask 077 && mktemp "${TMPDIR:-/tmp}/edgecc-token.XXXXXX")
            printf '%s' "$EDGECC_TOKEN" >"$DEPLOY_TMP_TOKEN"
            token_file=$DEPLOY_TMP_TOKEN
        fi
    elif [[ -n ${EDGECC_TOKEN_FILE:-} ]]; then
        # set explicitly: a typo must not silently mint a new token for the fleet
        [[ -s $EDGECC_TOKEN_FILE ]] || die "EDGECC_TOKEN_FILE=$EDGECC_TOKEN_FILE is missing or empty"
        token_file=$EDGECC_TOKEN_FILE
    else
        token_file=${XDG_CONFIG_HOME:-$HOME/.config}/edgecc/token
        if [[ ! -s $token_file ]]; then
            say "no token yet: creating $token_file (keep it secret; the master uses it too)"
            if ((DRY_RUN)); then
                printf '+ %s\n' "od -An -vtx1 -N32 /dev/urandom | tr -d ' \\n' > $token_file"
            else
                mkdir -p -m 0700 "$(dirname "$token_file")"
                # 64 hex digits; the value never appears on a command line
                (umask 077 && od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' >"$token_file")
                [[ $(wc -c <"$token_file") -eq 64 ]] || die "could not create $token_file"
            fi
        fi
        export EDGECC_TOKEN_FILE=$token_file   # for `edgecc ping` below
    fi

    # --- 1. the package ---
    if [[ -z $wheel ]]; then
        say "building the edgecc wheel"
        printf '+ cd %q\n' "$ROOT"
        (cd "$ROOT" && run "$(python_bin)" -m pip wheel --no-deps -w dist .)
        if ((DRY_RUN)); then
            wheel=$ROOT/dist/edgecc-VERSION-py3-none-any.whl
        else
            wheel=$(ls -t "$ROOT"/dist/edgecc-*.whl 2>/dev/null | head -n 1 || true)
            [[ -n $wheel ]] || die "no wheel in $ROOT/dist after the build"
        fi
    fi
    local wheel_name; wheel_name=$(basename "$wheel")

    # --- 2. copy everything into a private staging folder in the remote user's home ---
    # (not /tmp: predictable names there are unsafe on a shared board)
    local stage=edgecc-deploy
    say "copying files to $target:$stage/"
    run "${SSH[@]}" "$target" mkdir -p -m 0700 "$stage"
    ((DRY_RUN)) || DEPLOY_STAGED=$target:$stage
    run "${SCP[@]}" "$wheel" "$target:$stage/$wheel_name"
    run "${SCP[@]}" "$bundle" "$target:$stage/bundle.safetensors"
    run "${SCP[@]}" "$ROOT/workers/setup-pi.sh" "$ROOT/workers/edgecc-worker.service" \
        "$ROOT/workers/worker.env.example" "$target:$stage/"
    run "${SCP[@]}" "$token_file" "$target:$stage/token"

    # --- 3. install and restart; -t lets sudo ask for a password when we have a terminal ---
    local tty=(); if [[ -t 0 ]]; then tty=(-t); fi
    say "running setup-pi.sh on $target"
    run "${SSH[@]}" ${tty[@]+"${tty[@]}"} "$target" sudo bash "$stage/setup-pi.sh" --no-restart \
        --bundle "$stage/bundle.safetensors" --token-file "$stage/token" --port "$port" \
        "$stage/$wheel_name"
    say "restarting the worker"
    run "${SSH[@]}" ${tty[@]+"${tty[@]}"} "$target" sudo systemctl restart edgecc-worker.service
    # the token copy must not linger; the rest is re-sent on every deploy anyway
    run "${SSH[@]}" "$target" rm -rf "$stage"
    DEPLOY_STAGED=''

    # --- 4. the worker must answer the authenticated handshake ---
    say "checking the handshake with $host:$port"
    if ((DRY_RUN)); then
        run "$edgecc" ping "$host:$port"
        return 0
    fi
    # a Pi needs a few seconds to import numpy and load the bundle; the `+` line is the
    # same as --dry-run's, the retries are announced apart from it
    local i out
    printf '+ %q ping %q\n' "$edgecc" "$host:$port"
    for i in $(seq 1 10); do
        ((i == 1)) || say "ping: no answer yet, try $i of 10"
        if out=$("$edgecc" ping "$host:$port" 2>&1); then
            [[ -z $out ]] || printf '%s\n' "$out"
            say "worker on $host:$port is up"
            return 0
        fi
        sleep 3
    done
    printf '%s\n' "$out" >&2
    die "the worker on $host:$port did not answer; look at: ssh $target journalctl -u edgecc-worker -n 50"
}

# pi-test: the Raspberry Pi path for real, on an emulated arm64 Debian 12 board and in a container.
# Building the stand-ins takes minutes once; later runs reuse them. The default `test` run skips these
# (minutes under emulation); EDGECC_PI_TESTS=1 runs them and turns a skip (no root, no binfmt, no
# stand-in) into a failure: here they were asked for by name.
cmd_pi_test() {
    # Before the board build (minutes): pi-standin.sh builds the root with mmdebstrap and runs it
    # under qemu-user, podman imports the container base; the tests log into the board with
    # OpenSSH (a host sshd, ssh-keygen, and run.sh deploy's ssh and scp), build and run the
    # worker image with podman and buildah.
    need_programs pi-test mmdebstrap=mmdebstrap qemu-aarch64-static=qemu-user-static \
        podman=podman buildah=buildah /usr/sbin/sshd=openssh-server \
        ssh-keygen=openssh-client ssh=openssh-client scp=openssh-client
    ((EUID == 0)) || die "pi-test needs root (binfmt_misc, chroot, mounts, podman): sudo ./run.sh pi-test"
    cmd_setup
    # the venv's pip fetches the board's aarch64 wheel: Debian's python3 may have no pip
    PYTHON=$ROOT/.venv/bin/python nice -n 10 bash "$ROOT/workers/pi-standin.sh" all
    cd "$ROOT" && EDGECC_PI_TESTS=1 "$ROOT/.venv/bin/python" -m pytest -q -rs \
        tests/test_pi_board.py tests/test_container.py "$@"
}

# --- dispatch --------------------------------------------------------------------------------
main() {
    (($#)) || { usage >&2; exit 2; }
    local cmd=$1; shift
    case $cmd in
        setup) cmd_setup "$@" ;;
        demo) cmd_demo "$@" ;;
        test) cmd_test "$@" ;;
        scenario) cmd_scenario "$@" ;;
        deploy) cmd_deploy "$@" ;;
        pi-test) cmd_pi_test "$@" ;;
        help|-h|--help) usage ;;
        *) usage >&2; die "unknown command: $cmd" ;;
    esac
}

main "$@"
