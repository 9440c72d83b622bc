# Shared by scripts/test, scripts/demo and .ci/run: set up what iim needs on a
# fresh Debian/Ubuntu machine.  Sourced, not run.

IIM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IIM_CACHE="${IIM_CACHE:-$HOME/.cache/iim}"
export IIM_MASAKARI_VENV="${IIM_MASAKARI_VENV:-$IIM_CACHE/masakari-venv}"

log() { printf '[iim] %s\n' "$*" >&2; }

# A python that really runs (pyenv shims answer `command -v` for versions that are not active).
find_python() {
    local want="$1" cand
    for cand in "$want" /usr/bin/"$want" /usr/local/bin/"$want" "$HOME"/.pyenv/versions/*/bin/"$want"; do
        if [ -x "$(command -v "$cand" 2>/dev/null)" ] && "$cand" -c 'import venv' >/dev/null 2>&1; then
            command -v "$cand"
            return 0
        fi
    done
    return 1
}

apt_install() {
    # Installs Debian packages when they are missing (needs root, as on CI).
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq -o DPkg::Lock::Timeout=120 \
        --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_venv DIR PYTHON SPEC: a virtualenv at DIR with the project installed as SPEC.
ensure_venv() {
    local dir="$1" py="$2" spec="$3" stamp
    stamp="$dir/.iim-stamp"
    local want
    want="$(cat "$IIM_ROOT/pyproject.toml" | sha256sum | cut -c1-16) $spec"
    if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    log "preparing $dir ($("$py" --version 2>&1), $spec)"
    "$py" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    (cd "$IIM_ROOT" && "$dir/bin/python" -m pip install -q -e "$spec")
    echo "$want" > "$stamp"
}

# A real masakari-api lives in its own virtualenv: it pulls in eventlet,
# SQLAlchemy, taskflow and more, which iim itself must not depend on.
ensure_masakari_venv() {
    if [ -x "$IIM_MASAKARI_VENV/bin/masakari-api" ]; then
        return 0
    fi
    log "installing masakari-api from PyPI into $IIM_MASAKARI_VENV"
    "$(find_python python3)" -m venv "$IIM_MASAKARI_VENV"
    "$IIM_MASAKARI_VENV/bin/python" -m pip install -q masakari
}
