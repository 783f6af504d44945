#!/usr/bin/env bash
# Render the demo report in headless Chromium and save a screenshot (a real-browser check of report.html).
#
#   scripts/render_report.sh [REPORT_HTML] [SCREENSHOT_PNG] [HEIGHT]
#
# Defaults: demo_out/report.html -> demo_out/report.png, window 1280 x 4000. Needs Debian's chromium
# (`apt-get update && apt-get install -y chromium`); exits 2 when no chromium is found. Chromium runs with a
# throw-away profile, without sandbox, GPU, network services or first-run UI, so it works in containers and CI.
# The check fails (exit 1) when Chromium fails or the screenshot is missing or tiny.
set -euo pipefail

report="${1:-demo_out/report.html}"
shot="${2:-${report%.html}.png}"
height="${3:-4000}"

browser=""
for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then browser="$candidate"; break; fi
done
if [[ -z "$browser" ]]; then
    echo "render_report.sh: no chromium found (apt-get update && apt-get install -y chromium)" >&2
    exit 2
fi
if [[ ! -f "$report" ]]; then
    echo "render_report.sh: $report does not exist (run: nnteleport demo --out $(dirname "$report"))" >&2
    exit 1
fi

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
url="file://$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
rm -f "$shot"
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$profile" --screenshot="$shot" --window-size=1280,"$height" "$url" >/dev/null 2>&1 || {
    echo "render_report.sh: $browser failed on $url" >&2
    exit 1
}
size=$(stat -c %s "$shot" 2>/dev/null || echo 0)
if [[ "$size" -lt 20000 ]]; then
    echo "render_report.sh: screenshot $shot missing or too small ($size bytes)" >&2
    exit 1
fi
echo "render_report.sh: $url rendered by $browser -> $shot ($size bytes)"
