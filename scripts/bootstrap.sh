#!/usr/bin/env bash
# Sourced by ./tallies and ./run-tests: make .venv with tallies installed.
#
#   bootstrap_tallies [EXTRA]    EXTRA is a pip extra such as "test" (or empty)
#   bootstrap_benchmarks         the peers of benchmarks/requirements.txt (./tallies bench)
#   bootstrap_docs               the docs site's tools, docs/requirements.txt (scripts/docs)
#
# On a fresh Debian machine with nothing but python3, it installs (as root, via
# apt-get) what a virtual environment and the C build need: python3-venv,
# python3-dev and gcc.  It reinstalls tallies whenever a file under src/,
# setup.py or pyproject.toml changed since the last install.
set -euo pipefail

TALLIES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TALLIES_VENV:-$TALLIES_ROOT/.venv}"
PY="${PYTHON:-python3}"

_say() { printf 'tallies setup: %s\n' "$*" >&2; }

# CI (CI=true) and TALLIES_REQUIRE_REDIS=1 require every server and tool the
# tests use: then failing to install one is an error, not a skip later.
_servers_required() {
    [ "${CI:-}" = true ] || [ "${TALLIES_REQUIRE_REDIS:-0}" = 1 ]
}

_apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        _say "installing $* with apt-get"
        # (another apt-get, e.g. scripts/ft-python's, may hold dpkg's lock: wait for it)
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
                "$@" >/dev/null
    else
        _say "missing system packages: $* (install them, e.g. 'sudo apt-get install $*')"
        return 1
    fi
}

_need_system_packages() {
    command -v "$PY" >/dev/null 2>&1 || _apt_install python3
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
        _say "tallies needs Python 3.10 or newer; $PY is $("$PY" -V 2>&1)"
        return 1
    }
    local missing=()
    "$PY" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    "$PY" - <<'PYEOF' 2>/dev/null || missing+=(python3-dev)
import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))
PYEOF
    command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1 || missing+=(gcc)
    if [ ${#missing[@]} -gt 0 ]; then
        _apt_install "${missing[@]}" || {
            # Without a compiler tallies still works, on its pure-Python fallback.
            [ "${TALLIES_REQUIRE_C:-0}" != 1 ] && "$PY" -c 'import ensurepip, venv' 2>/dev/null
        }
    fi
}

_need_test_tools() {
    # The tests start a real Prometheus server and drive `tallies watch` in tmux.
    # Installed only when missing, only as root; without them those tests fail
    # (TALLIES_REQUIRE_C=1) with the reason, and under CI=true so does this.
    # Debian's package starts or enables a prometheus service: stop and disable
    # it, the tests run their own.
    local missing=()
    command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
    command -v tmux >/dev/null 2>&1 || missing+=(tmux)
    # The redis:// nemesis (tests/_nemesis.py): network namespaces and nftables.
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    [ ${#missing[@]} -eq 0 ] && return 0
    _apt_install --no-install-recommends "${missing[@]}" || {
        if _servers_required; then
            _say "cannot install ${missing[*]}, which CI requires (CI=true)"
            return 1
        fi
        return 0
    }
    if [[ " ${missing[*]} " == *" prometheus "* ]]; then
        { command -v systemctl && systemctl disable --now prometheus; } >/dev/null 2>&1 || true
        { command -v service && service prometheus stop; } >/dev/null 2>&1 || true
        { command -v update-rc.d && update-rc.d prometheus disable; } >/dev/null 2>&1 || true
    fi
}

# The redis:// tests start their own redis-server (and a 3-node cluster) on free
# loopback ports; install it for the test extra when it is missing.  Debian's
# package may start a service on 6379: stop and disable it, the tests never use it.
_need_redis_server() {
    command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
    _apt_install redis-server redis-tools || {
        if _servers_required; then
            _say "cannot install redis-server, which CI=true / TALLIES_REQUIRE_REDIS=1 require"
            return 1
        fi
        _say "redis-server is missing: the redis:// tests will be skipped (CI fails them)"
        return 0
    }
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now redis-server >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
        service redis-server stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null 2>&1 && update-rc.d redis-server disable >/dev/null 2>&1 || true
    fi
}

# The docs tests open the built site in headless Chromium (Debian's chromium).
_need_chromium() {
    command -v chromium >/dev/null 2>&1 && return 0
    _apt_install --no-install-recommends chromium || {
        if _servers_required; then
            _say "cannot install chromium, which CI=true requires (tests/docs/test_docs_browser.py)"
            return 1
        fi
        _say "chromium is missing: the docs' browser check will be skipped (CI fails it)"
        return 0
    }
}

# The install stamp: "<hash of the sources> <werror 0|1> <extras, comma-separated>".
_src_hash() {
    (cd "$TALLIES_ROOT" && find src setup.py pyproject.toml -type f ! -path '*.egg-info/*' ! -path '*/__pycache__/*' \
        ! -name '*.so' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum \
        | sha256sum | cut -c1-16)
}

# _union A B: the extras of both comma lists, sorted, once each.
_union() { printf '%s,%s' "$1" "$2" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -; }

# _satisfied HAVE WANT: the install HAVE serves WANT: same sources, built with
# -Werror if WANT asks for it, and every extra WANT needs already installed.
# (So ./tallies and ./run-tests, which ask for different extras, share .venv
# without reinstalling after each other.)
_satisfied() {
    local hh hw hx wh ww wx e
    read -r hh hw hx <<<"$1"
    read -r wh ww wx <<<"$2"
    [ -n "$hh" ] && [ "$hh" = "$wh" ] || return 1
    [ "$hw" = 1 ] || [ "$ww" = 0 ] || return 1
    for e in ${wx//,/ }; do
        case ",$hx," in *,"$e",*) ;; *) return 1 ;; esac
    done
}

bootstrap_tallies() {
    local extra="${1:-}"
    _need_system_packages
    case ",$extra," in *,test,*) _need_redis_server ;; esac
    case ",$extra," in *,test,*) _need_test_tools ;; esac
    case ",$extra," in *,test,*) _need_chromium ;; esac
    if [ ! -x "$VENV/bin/python" ]; then
        _say "creating $VENV"
        "$PY" -m venv "$VENV"
    fi
    local want have
    want="$(_src_hash) ${TALLIES_WERROR:-0} $(_union "" "$extra")"
    have="$(cat "$VENV/.tallies-stamp" 2>/dev/null || true)"
    if ! _satisfied "$have" "$want"; then
        # Keep what was installed before (another command's extras, -Werror).
        local werror="${TALLIES_WERROR:-0}" extras _hh hw hx
        read -r _hh hw hx <<<"$have" || true
        extras="$(_union "${hx:-}" "$extra")"
        [ "${hw:-0}" = 1 ] && werror=1
        _say "installing tallies${extras:+[$extras]} into $VENV (builds the C core)"
        local spec="$TALLIES_ROOT" log="$VENV/tallies-install.log"
        [ -n "$extras" ] && spec="$TALLIES_ROOT[$extras]"
        if ! { "$VENV/bin/python" -m pip install --upgrade pip "setuptools>=77" wheel &&
               TALLIES_WERROR="$werror" "$VENV/bin/python" -m pip install --no-build-isolation "$spec"; } >"$log" 2>&1; then
            cat "$log" >&2
            _say "installing tallies failed (log above, also in $log)"
            return 1
        fi
        grep -E "tallies: the C core could not be built" "$log" >&2 || true
        printf '%s %s %s' "$(_src_hash)" "$werror" "$extras" >"$VENV/.tallies-stamp"
    fi
}

# The peers the benchmarks compare with, from benchmarks/requirements.txt, into
# the same .venv; installed again only when that file changed.  Without them
# (no network) the benchmarks still run and their rows say "not installed".
bootstrap_benchmarks() {
    local req="$TALLIES_ROOT/benchmarks/requirements.txt" stamp="$VENV/.benchmarks-stamp"
    local log="$VENV/benchmarks-install.log" want
    want="$(sha256sum "$req" | cut -c1-16)"
    [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] && return 0
    _say "installing the benchmarks' peers into $VENV (benchmarks/requirements.txt)"
    if "$VENV/bin/python" -m pip install -r "$req" >"$log" 2>&1; then
        printf '%s' "$want" >"$stamp"
    else
        _say "could not install them (log: $log); their rows will say \"not installed\""
    fi
}

# The docs site's tools (MkDocs, Material, mkdocstrings, matplotlib for the plots)
# from docs/requirements.txt, into the same .venv; installed again only when that
# file changed.  ./run-tests needs them for tests/docs, scripts/docs for the site.
bootstrap_docs() {
    local req="$TALLIES_ROOT/docs/requirements.txt" stamp="$VENV/.docs-stamp"
    local log="$VENV/docs-install.log" want
    want="$(sha256sum "$req" | cut -c1-16)"
    [ "$(cat "$stamp" 2>/dev/null || true)" = "$want" ] && return 0
    _say "installing the docs site's tools into $VENV (docs/requirements.txt)"
    if "$VENV/bin/python" -m pip install -r "$req" >"$log" 2>&1; then
        printf '%s' "$want" >"$stamp"
    else
        cat "$log" >&2
        _say "could not install docs/requirements.txt (log above, also in $log)"
        return 1
    fi
}
