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
# a page taller than Chromium's largest window is captured in tiles of at most max_height px: tile k shows the
# page shifted up by its offset (a copy of the page with `position:relative; top:-offset` on its body, which moves
# the rendering without changing the layout; in the same folder, so relative image paths resolve alike), saved as NAME.k.png (k = 2, 3, ...)
shoot() { # shoot URL WINDOW_HEIGHT PNG
    rm -f "$3"
    timeout 120 "$browser" "${flags[@]}" --window-size="$width,$2" --virtual-time-budget=10000 \
        --screenshot="$3" "$1" >/dev/null 2>&1 || {
        echo "render_report.sh: $browser failed on $1" >&2
        exit 1
    }
    if [[ ! -s "$3" ]]; then
        echo "render_report.sh: no screenshot written to $3" >&2
        exit 1
    fi
    # PNG header: width and height are big-endian 32-bit integers at bytes 16..23
    read -r png_w png_h < <(od -An -tu1 -j16 -N8 "$3" | awk '{print ($1*16777216+$2*65536+$3*256+$4), ($5*16777216+$6*65536+$7*256+$8)}')
    if [[ "$png_h" -lt "$2" ]]; then
        echo "render_report.sh: screenshot $3 is ${png_w}x${png_h}: it shows $((100 * png_h / $2))% of its $2 px" >&2
        exit 1
    fi
}

tiles=()
offset=0
k=1
while [[ "$offset" -lt "$height" ]]; do
    h=$((height - offset < max_height ? height - offset : max_height))
    if [[ "$k" -eq 1 ]]; then
        out="$shot"
        src="$url"
    else
        out="${shot%.png}.$k.png"
        tile="$dir/.render_tile_$$_$k.html"
        {
            cat "$report"
            echo "<style>html body{position:relative!important;top:-${offset}px!important}</style>"
        } >"$tile"
        src="file://$tile"
    fi
    shoot "$src" "$h" "$out"
    [[ "$k" -gt 1 ]] && rm -f "$tile"
    tiles+=("$out")
    offset=$((offset + h))
    k=$((k + 1))
done
size=$(cat "${tiles[@]}" | wc -c)
if [[ "${#tiles[@]}" -eq 1 ]]; then
    echo "render_report.sh: $url ($height px) rendered by $browser -> $shot (${png_w}x${png_h}, $size bytes)"
else
    echo "render_report.sh: $url ($height px) rendered by $browser -> ${#tiles[@]} tiles ${tiles[*]} ($size bytes)"
fi
