#!/usr/bin/env bash
# A PNG of the running Prometheus's graph page with one panel per recording rule of the
# dashboard (the picture in the README's Monitoring section). Headless Chromium (Debian's
# `chromium` package) renders Prometheus's own UI; nothing is drawn by hand.
#
#   deploy/monitoring/screenshot.sh [OUT.png] [PROMETHEUS_URL] [RANGE]
#   RULES="tuneship:request_rate:rate1m ..." deploy/monitoring/screenshot.sh   # other panels
#
# Defaults: deploy/monitoring/dashboard.png, http://127.0.0.1:9090, 15m (the range shown).
set -euo pipefail

out=${1:-deploy/monitoring/dashboard.png}
prom=${2:-http://127.0.0.1:9090}
range=${3:-15m}
rules=${RULES:-"tuneship:request_rate:rate1m tuneship:llm_generation_tokens:rate1m
  tuneship:llm_ttft_seconds:p50_5m tuneship:llm_running tuneship:llm_queue_depth
  tuneship:inference_log_written:rate5m"}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "screenshot: no chromium (apt-get install -y chromium)" >&2; exit 1; }
curl -fsS "$prom/-/ready" >/dev/null || { echo "screenshot: no Prometheus at $prom (make monitoring-up)" >&2; exit 1; }

# Every rule must have data, or the picture would show empty panels without saying so.
for rule in $rules; do
  n=$(curl -fsS --get "$prom/api/v1/query" --data-urlencode "query=count($rule)" |
      python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)')
  [ "$n" != 0 ] || { echo "screenshot: $rule has no series yet (send traffic, wait a scrape)" >&2; exit 1; }
done

query=$(python3 - "$range" $rules <<'EOF'
import sys, urllib.parse
range_, rules = sys.argv[1], sys.argv[2:]
params = {}
for i, rule in enumerate(rules):
    params.update({f"g{i}.expr": rule, f"g{i}.tab": "0", f"g{i}.range_input": range_,
                   f"g{i}.display_mode": "lines", f"g{i}.show_exemplars": "0"})
print(urllib.parse.urlencode(params))
EOF
)
height=$((160 + 720 * $(wc -w <<<"$rules")))
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
  --window-size=1280,"$height" --virtual-time-budget=20000 \
  --screenshot="$(realpath -m "$out")" "$prom/graph?$query" 2>/dev/null
echo "wrote $out ($(wc -w <<<"$rules") panels, last $range of $prom)"
