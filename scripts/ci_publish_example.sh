#!/usr/bin/env bash
# What CI and a device do, end to end, against a control plane this script starts:
#   1. publish a real model from models/ with `edgefleet publish --quantize` (token with the publish scope),
#   2. enroll a device and download the cpu-fp32 bundle with curl, dropping the link a third of the way
#      in and resuming with HTTP Range,
#   3. verify it with `edgefleet verify` (signature, digests, expiry, reference outputs),
#   4. print the cpu-int8 variant's size, latency ratio and top-1 agreement.
#
#   scripts/ci_publish_example.sh [model-name]        # default: parts-classifier
#
# Needs the project's virtualenv (make install) and zoo/onnx/<name>.onnx with zoo/<name>.json.
# Everything lives in a temporary folder (SQLite, storage, keys) that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=${1:-parts-classifier}
BIN=${BIN:-.venv/bin}
PY="$BIN/python"
MODEL=${MODEL:-models/onnx/$NAME.onnx}
META=${META:-models/$NAME.json}
PORT=${PORT:-8765}
SERVER="http://127.0.0.1:$PORT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgefleet-ci-XXXXXX")

for f in "$MODEL" "$META"; do
    [ -f "$f" ] || { echo "missing $f (python -m zoo.train $NAME writes it)" >&2; exit 2; }
done

export EDGEFLEET_DATA_DIR="$WORK/data" DATABASE_URL="sqlite:///$WORK/data/edgefleet.sqlite3"
export CELERY_TASK_ALWAYS_EAGER=true BROKER_PROVISIONER=none LOG_LEVEL=WARNING
mkdir -p "$EDGEFLEET_DATA_DIR"

"$PY" manage.py migrate -v 0
"$PY" manage.py runserver "127.0.0.1:$PORT" --noreload >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
cleanup() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fsS "$SERVER/healthz" >/dev/null 2>&1 && break; sleep 0.2; done

# A CI token (publish scope, docs/ci.md) and a one-time enrollment token, as an operator would issue them.
ENROLL="$("$PY" manage.py shell -v 0 -c "
from django.contrib.auth import get_user_model
from fleet.models import EnrollmentToken, Site
get_user_model().objects.create_user('ci-bot', is_staff=True)
_, enroll = EnrollmentToken.issue(Site.objects.create(slug='plant-a', name='Plant A'))
print(enroll)" | tail -1)"
TOKEN="$("$PY" manage.py api_token create --user ci-bot --name github-actions --scope publish --expires-in-days 1)"

echo "== 1. publish $NAME from $MODEL (8 reference and 64 calibration images from zoo.samples)"
if grep -q '"task": "detection"' "$META"; then
    # A detector is fed whole frames, not part crops.
    "$PY" -c "
import sys
from pathlib import Path
from zoo import samples
for folder, seed, count in ((sys.argv[1], samples.REFERENCE_SEED, 8), (sys.argv[2], samples.CALIBRATION_SEED, 64)):
    samples.write_samples(Path(folder), samples.reference_frames(count=count, seed=seed))
" "$WORK/reference" "$WORK/calibration" >/dev/null
else
    "$PY" -m zoo.samples reference "$WORK/reference" --count 8 >/dev/null
    "$PY" -m zoo.samples calibration "$WORK/calibration" --count 64 >/dev/null
fi
refs=()
for image in "$WORK"/reference/*.png; do refs+=(--reference "$image"); done
for image in "$WORK"/calibration/*.png; do refs+=(--calibration "$image"); done
EDGEFLEET_TOKEN="$TOKEN" "$BIN/edgefleet" publish --server "$SERVER" --model "$NAME" --file "$MODEL" \
    --metadata "$META" --quantize "${refs[@]}" >"$WORK/published.json"
EDGEFLEET_TOKEN="$TOKEN" "$BIN/edgefleet" publish --server "$SERVER" --model "$NAME" --file "$MODEL" \
    --metadata "$META" --quantize "${refs[@]}" >/dev/null
echo "   re-publishing the same content: exit 0 (idempotent)"

echo "== 2. enroll a device and download the cpu-fp32 bundle with a dropped link and a resume"
curl -fsS -X POST "$SERVER/api/v1/enroll" -H 'Content-Type: application/json' \
    -d "{\"token\": \"$ENROLL\", \"name\": \"cam-1\", \"site\": \"plant-a\", \"agent_version\": \"0.1.0\"}" \
    >"$WORK/enrolled.json"
read -r DEVICE SECRET URL SIZE SHA < <("$PY" -c "
import json, sys
enrolled, published = (json.load(open(p)) for p in sys.argv[1:])
json.dump({'trust_store': enrolled['trust_store']}, open(sys.argv[1] + '.trust', 'w'))
fp32 = next(b for b in published['bundles'] if b['target'] == 'cpu-fp32')
print(enrolled['device_id'], enrolled['secret'], fp32['download_url'], fp32['size'], fp32['sha256'])
" "$WORK/enrolled.json" "$WORK/published.json")
curl -fsS -u "$DEVICE:$SECRET" -r "0-$((SIZE / 3 - 1))" -o "$WORK/bundle.tar.gz" "$URL"
echo "   link dropped after $(stat -c %s "$WORK/bundle.tar.gz") of $SIZE bytes"
curl -fsS -u "$DEVICE:$SECRET" -C - -o "$WORK/bundle.tar.gz" -D "$WORK/headers" "$URL"
echo "   resumed: $(head -1 "$WORK/headers" | tr -d '\r'), $(grep -i '^content-range' "$WORK/headers" | tr -d '\r')"
echo "$SHA  $WORK/bundle.tar.gz" | sha256sum -c --quiet && echo "   sha256 matches the registry: $SHA"

echo "== 3. verify as the device does"
"$BIN/edgefleet" verify "$WORK/bundle.tar.gz" --trust-store "$WORK/enrolled.json.trust" --agent-version 0.1.0

echo "== 4. the cpu-int8 variant, measured against cpu-fp32 on the reference set"
"$PY" -c "
import json, sys
published = json.load(open(sys.argv[1]))
for b in published['bundles']:
    m = b['metrics']
    if b['target'] == 'cpu-int8':
        if m.get('detection_agreement') is not None:
            print(f\"   detections kept by int8: {m['detection_agreement']:.1%} of {m['fp32_detections']} fp32 detections\")
        print(f\"   cpu-int8: {b['size']} B bundle, model {m['size_bytes']} B vs {m['fp32_size_bytes']} B fp32 \"
              f\"(x{m['size_ratio']}); latency {m['int8_latency_ms']} ms vs {m['fp32_latency_ms']} ms \"
              f\"(ratio {m['latency_ratio']}); top-1 agreement {m['top1_agreement']:.1%} on {m['measured_on']} \"
              f\"reference and calibration inputs; max |delta| {m['max_abs_output_delta']}\")
    else:
        print(f\"   {b['target']}: {b['size']} B bundle, sha256 {b['sha256'][:16]}..., key {b['key_id']}\")
" "$WORK/published.json"
echo "OK"
