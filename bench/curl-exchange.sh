#!/usr/bin/env bash
# Reference: the instance-identity exchange done with curl + jq, the way users script it today.
# Used by bench/run.sh as the baseline; usable on its own too:
#
#   bench/curl-exchange.sh aws|gcp|azure METADATA_URL CODER_URL AGENT_NAME TOKEN_FILE
#
# METADATA_URL: AWS http://169.254.169.254, GCP http://metadata.google.internal,
#               Azure http://169.254.169.254 (or a simulator's URL).
# Needs curl and jq on PATH (bench/run.sh installs them with apt-get if missing).
# Exits non-zero on any HTTP error (curl -f) or an answer without a session token.
set -euo pipefail

cloud=$1 md=${2%/} coder=${3%/} name=$4 out=$5

case $cloud in
aws)
  tok=$(curl -sSf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' "$md/latest/api/token")
  sig=$(curl -sSf -H "X-aws-ec2-metadata-token: $tok" "$md/latest/dynamic/instance-identity/signature")
  doc=$(curl -sSf -H "X-aws-ec2-metadata-token: $tok" "$md/latest/dynamic/instance-identity/document")
  body=$(jq -n --arg s "$sig" --arg d "$doc" --arg n "$name" \
    '{signature: $s, document: $d, agent_name: $n}')
  path=aws-instance-identity
  ;;
gcp)
  jwt=$(curl -sSf -H 'Metadata-Flavor: Google' \
    "$md/computeMetadata/v1/instance/service-accounts/default/identity?audience=coder&format=full")
  body=$(jq -n --arg j "$jwt" --arg n "$name" '{json_web_token: $j, agent_name: $n}')
  path=google-instance-identity
  ;;
azure)
  att=$(curl -sSf -H 'Metadata: true' "$md/metadata/attested/document?api-version=2020-09-01")
  body=$(jq -c --arg n "$name" '{signature, encoding, agent_name: $n}' <<<"$att")
  path=azure-instance-identity
  ;;
*) echo "usage: $0 aws|gcp|azure METADATA_URL CODER_URL AGENT_NAME TOKEN_FILE" >&2; exit 2 ;;
esac

token=$(curl -sSf -X POST -H 'Content-Type: application/json' --data-binary "$body" \
  "$coder/api/v2/workspaceagents/$path" | jq -er '.session_token')
umask 077
printf '%s\n' "$token" >"$out"
