#!/bin/sh
# Writes deploy/compose/secrets/: random passwords, a private CA, and TLS certificates for the
# dashboard/API host and the MQTT host. Never overwrites a file that exists, so it is safe to re-run.
#   ./init-secrets.sh fleet.example.com mqtt.example.com
# Replace web.crt/web.key and mqtt.crt/mqtt.key with certificates of your own CA when you have one;
# devices must trust the CA that signed mqtt.crt (ca.crt here): docs/operations.md, "TLS".
set -eu
web_host=${1:?usage: $0 WEB_HOST MQTT_HOST}
mqtt_host=${2:?usage: $0 WEB_HOST MQTT_HOST}
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
cd secrets

random() { [ -s "$1" ] || openssl rand -hex 32 > "$1"; }
for name in secret_key postgres_password bridge_password broker_admin_password metrics_token s3_secret_key; do
    random "$name"
done
[ -s database_url ] || printf 'postgres://edgefleet:%s@postgres:5432/edgefleet\n' "$(cat postgres_password)" > database_url

if [ ! -s ca.key ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=edgefleet private CA" -keyout ca.key -out ca.crt
fi
certificate() {  # name host
    [ -s "$1.crt" ] && return 0
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr"
    printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$2" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile "$1.ext" -out "$1.crt"
    rm -f "$1.csr" "$1.ext"
}
certificate web "$web_host"
certificate mqtt "$mqtt_host"

# The containers run as their own users (edgefleet 10001, mosquitto 1883, caddy, postgres): the files
# must be readable by them; the folder (0700) keeps other users of this host out.
chmod 0644 ./*
chmod 0600 ca.key
chmod 0700 .
printf 'COMPOSE_PROJECT_NAME=edgefleet\nEDGEFLEET_HOST=%s\nEDGEFLEET_MQTT_HOST=%s\n' "$web_host" "$mqtt_host" > ../.env
echo "secrets written to $(pwd); devices must trust $(pwd)/ca.crt"
