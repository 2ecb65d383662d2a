# Sourced by scripts/bootstrap.sh --test: the browser test of the demo drives Debian's Chromium.
# salsa_need_chromium installs it where it may (root with apt-get, e.g. CI). Where the browser test is
# required (SALSA_REQUIRE_BROWSER=1, which .ci/run sets, or CI=true) a browser that is still missing
# stops the set-up with exit status 1; elsewhere it warns that the test will be skipped.
# SALSA_CHROMIUM names the command to look for (default chromium).

_salsa_browser_required() {
  local ci="${CI:-}"
  [ "${SALSA_REQUIRE_BROWSER:-}" = 1 ] || [ "${ci,,}" = true ] || [ "$ci" = 1 ]
}

salsa_need_chromium() {
  local browser="${SALSA_CHROMIUM:-chromium}" why
  if command -v "$browser" >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Chromium for the browser test (apt-get)"
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >"$SALSA_ROOT/.salsa-apt.log" 2>&1 && command -v "$browser" >/dev/null 2>&1; then
      return 0
    fi
    why="installing Chromium with apt-get failed (log: .salsa-apt.log)"
  else
    why="no Chromium ($browser), and installing it needs root and apt-get (as root: apt-get install chromium)"
  fi
  if _salsa_browser_required; then
    echo "bootstrap: $why; the browser test is required here (SALSA_REQUIRE_BROWSER=1 or CI=true): stopping" >&2
    return 1
  fi
  echo "bootstrap: $why; the browser test will be skipped (SALSA_REQUIRE_BROWSER=1 makes that an error)" >&2
}
