#!/usr/bin/env bash
# The Vault (or OpenBao) side of token-sidecar for one app: a policy, a Kubernetes auth role
# bound to the app's service account, and optionally the seeded refresh token.
#
#   NAMESPACE=my-namespace SERVICE_ACCOUNT=my-app ./setup.sh
#   REFRESH_TOKEN_FILE=./refresh_token CLIENT_ID=my-app ./setup.sh    # also seed the secret
#   VAULT=bao ./setup.sh                                               # OpenBao's CLI
#
# Uses the CLI's usual VAULT_ADDR / VAULT_TOKEN (BAO_ADDR / BAO_TOKEN for bao); the caller
# needs rights to write policies and auth roles. Secrets are read from files or stdin, never
# taken as arguments (they would show in `ps` and shell history). Safe to run again.
set -euo pipefail

VAULT=${VAULT:-vault}
NAMESPACE=${NAMESPACE:-my-namespace}          # the app's namespace
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-my-app}    # the pod's service account (chart: serviceAccount.name)
ROLE=${ROLE:-my-app}                          # config vault.auth.role
POLICY=${POLICY:-${ROLE}-tokens}
AUTH_MOUNT=${AUTH_MOUNT:-kubernetes}          # config vault.auth.mount
AUDIENCE=${AUDIENCE:-vault}                   # chart: serviceAccountToken.audience
KV_MOUNT=${KV_MOUNT:-secret}                  # config credentials[].kv_mount
KV_PATH=${KV_PATH:-apps/my-app/billing}       # config credentials[].kv_path
TOKEN_TTL=${TOKEN_TTL:-1h}
# Set to configure the auth mount itself, e.g. https://kubernetes.default.svc when Vault runs
# in the cluster (outside it, also set kubernetes_ca_cert and token_reviewer_jwt by hand).
KUBERNETES_HOST=${KUBERNETES_HOST:-}
# Optional seeding: the refresh token from a file (or REFRESH_TOKEN_FILE=- for stdin),
# client_id as a plain value, client_secret from a file.
REFRESH_TOKEN_FILE=${REFRESH_TOKEN_FILE:-}
CLIENT_ID=${CLIENT_ID:-}
CLIENT_SECRET_FILE=${CLIENT_SECRET_FILE:-}

echo "policy ${POLICY}: read and write back ${KV_MOUNT}/${KV_PATH}"
"${VAULT}" policy write "${POLICY}" - <<POLICY
path "${KV_MOUNT}/data/${KV_PATH}" {
  capabilities = ["read", "create", "update"]
}
path "${KV_MOUNT}/metadata/${KV_PATH}" {
  capabilities = ["read"]
}
POLICY

if ! "${VAULT}" auth list -format=json | grep -q "\"${AUTH_MOUNT}/\""; then
    echo "enabling the kubernetes auth method at ${AUTH_MOUNT}/"
    "${VAULT}" auth enable -path="${AUTH_MOUNT}" kubernetes
fi
if [[ -n "${KUBERNETES_HOST}" ]]; then
    "${VAULT}" write "auth/${AUTH_MOUNT}/config" kubernetes_host="${KUBERNETES_HOST}"
fi

echo "role ${ROLE}: service account ${NAMESPACE}/${SERVICE_ACCOUNT}, audience ${AUDIENCE}"
"${VAULT}" write "auth/${AUTH_MOUNT}/role/${ROLE}" \
    bound_service_account_names="${SERVICE_ACCOUNT}" \
    bound_service_account_namespaces="${NAMESPACE}" \
    audience="${AUDIENCE}" \
    token_policies="${POLICY}" \
    token_ttl="${TOKEN_TTL}"

if [[ -n "${REFRESH_TOKEN_FILE}" ]]; then
    fields=("refresh_token=@${REFRESH_TOKEN_FILE}")
    if [[ "${REFRESH_TOKEN_FILE}" == "-" ]]; then
        fields=("refresh_token=-")
    fi
    if [[ -n "${CLIENT_ID}" ]]; then
        fields+=("client_id=${CLIENT_ID}")
    fi
    if [[ -n "${CLIENT_SECRET_FILE}" ]]; then
        fields+=("client_secret=@${CLIENT_SECRET_FILE}")
    fi
    echo "seeding ${KV_MOUNT}/${KV_PATH}"
    "${VAULT}" kv put -mount="${KV_MOUNT}" "${KV_PATH}" "${fields[@]}"
else
    echo "not seeding: later run"
    echo "  ${VAULT} kv put -mount=${KV_MOUNT} ${KV_PATH} refresh_token=@FILE [client_id=...] [client_secret=@FILE]"
fi
