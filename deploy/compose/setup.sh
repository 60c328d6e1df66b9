#!/bin/sh
# The one-shot services of deploy/compose.yaml. Each step keeps what an earlier `up` made.
#   setup.sh init    (as root, before the server) the CA, the server's certificate, the admin
#                    token and the sites' keys, each volume owned by the image's user
#   setup.sh enrol   (once the server is ready) registers the sites and makes Prometheus' viewer
#                    token, over the admin API
set -eu
Q=/var/lib/quorum
SITES=${SITES:-cleveland hungarian switzerland va}

init() {
    if [ ! -f "$Q/ca/ca.key" ]; then
        quorum certs init --dir "$Q/ca" --name "Quorum compose CA"
    fi
    if [ ! -f "$Q/tls/server.crt" ]; then
        # The names the sites (server:8600), Prometheus and a host's own browser dial.
        quorum certs issue --dir "$Q/ca" --san server --san localhost --san 127.0.0.1 \
            --out "$Q/tls"
    fi
    cp "$Q/tls/ca.crt" "$Q/trust/ca.crt"
    if [ ! -s "$Q/secrets/admin.token" ]; then
        (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(32))' \
            > "$Q/secrets/admin.token")
    fi
    for site in $SITES; do
        if [ ! -f "$Q/keys/$site.key" ]; then
            quorum site keygen --out "$Q/keys/$site.key"
        fi
    done
    chown -R 10001:10001 "$Q/ca" "$Q/tls" "$Q/trust" "$Q/secrets" "$Q/keys" "$Q/state" \
        "$Q/prometheus"
}

enrol() {
    for site in $SITES; do
        if [ ! -f "$Q/keys/$site.registered" ]; then
            quorum sites add "$site" --public-key "$Q/keys/$site.pub"
            touch "$Q/keys/$site.registered"
        fi
    done
    if [ ! -s "$Q/prometheus/prometheus.token" ]; then
        quorum tokens create --name prometheus --role viewer --output json \
            | python -c 'import json, sys; print(json.load(sys.stdin)["token"])' \
            > "$Q/prometheus/prometheus.token.new"
        mv "$Q/prometheus/prometheus.token.new" "$Q/prometheus/prometheus.token"
    fi
}

"$1"
