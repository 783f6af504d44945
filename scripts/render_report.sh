#!/usr/bin/env bash
# Render the demo report in headless Chromium and save a screenshot of the WHOLE page (a real-browser check).
#
#   scripts/render_report.sh [REPORT_HTML] [SCREENSHOT_PNG]
#
# Defaults: demo_out/report.html -> demo_out/report.png, 1280 px wide. Needs Debian's chromium
# (`apt-get update && apt-get install -y chromium`); exits 2 when no chromium is found. Chromium runs with a
# throw-away profile, without sandbox, GPU, network services or first-run UI, so it works in containers and CI.
#
# Two passes: the first loads the page and reads its full height (document.documentElement.scrollHeight, via a
# copy of the page with one line of script that writes the height into the DOM, read back with --dump-dom); the
# second takes a screenshot with a window of exactly that height. The check fails (exit 1) when Chromium fails,
# the height cannot be measured, or the PNG is not as tall as the page (it reports how much was captured).
set -euo pipefail

report="${1:-demo_out/report.html}"
shot="${2:-${report%.html}.png}"
width=1280
max_height=16384 # Chromium's largest headless window

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
dir="$(cd "$(dirname "$report")" && pwd)"
probe="$dir/.render_probe_$$.html"
trap 'rm -rf "$profile" "$probe"' EXIT
url="file://$dir/$(basename "$report")"
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
    --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$profile")

# pass 1: the page's height at this width (the probe is the report plus a script, in the same folder so that
# relative image paths resolve alike)
{
    cat "$report"
    echo '<script>window.addEventListener("load",function(){document.body.setAttribute("data-page-height",'
    echo 'String(Math.ceil(document.documentElement.scrollHeight)));});</script>'
} >"$probe"
dom=$(timeout 120 "$browser" "${flags[@]}" --window-size="$width,1000" --virtual-time-budget=10000 \
    --dump-dom "file://$probe" 2>/dev/null) || {
    echo "render_report.sh: $browser failed to load $url" >&2
    exit 1
}
height=$(grep -o 'data-page-height="[0-9]*"' <<<"$dom" | head -n1 | grep -o '[0-9]*' || true)
if [[ -z "$height" || "$height" -lt 1 ]]; then
    echo "render_report.sh: could not measure the height of $url" >&2
    exit 1
fi
if [[ "$height" -gt "$max_height" ]]; then
    echo "render_report.sh: $url is $height px tall, more than the $max_height px Chromium can capture" >&2
    exit 1
fi

# pass 2: the screenshot, one window as tall as the page
rm -f "$shot"
timeout 120 "$browser" "${flags[@]}" --window-size="$width,$height" --virtual-time-budget=10000 \
    --screenshot="$shot" "$url" >/dev/null 2>&1 || {
    echo "render_report.sh: $browser failed on $url" >&2
    exit 1
}
if [[ ! -s "$shot" ]]; then
    echo "render_report.sh: no screenshot written to $shot" >&2
    exit 1
fi
# PNG header: width and height are big-endian 32-bit integers at bytes 16..23
read -r png_w png_h < <(od -An -tu1 -j16 -N8 "$shot" | awk '{print ($1*16777216+$2*65536+$3*256+$4), ($5*16777216+$6*65536+$7*256+$8)}')
if [[ "$png_h" -lt "$height" ]]; then
    pct=$((100 * png_h / height))
    echo "render_report.sh: screenshot $shot is ${png_w}x${png_h}: it shows $pct% of the $height px page" >&2
    exit 1
fi
size=$(stat -c %s "$shot")
echo "render_report.sh: $url ($height px) rendered by $browser -> $shot (${png_w}x${png_h}, $size bytes)"
