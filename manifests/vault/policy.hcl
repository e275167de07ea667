# Vault (or OpenBao) policy for token-sidecar: read the refresh token of each credential and
# write rotated ones back with check-and-set. One pair of paths per credential; these match
# the example (KV v2 mount "secret", path "apps/my-app/billing"). For a KV v2 mount the API
# paths carry data/ and metadata/ after the mount; `vault kv ...` commands add them for you.
#
#   vault policy write my-app-tokens policy.hcl

# Read the secret and write a rotated refresh token back (check-and-set on the version read).
path "secret/data/apps/my-app/billing" {
  capabilities = ["read", "create", "update"]
}

# Read the secret's metadata (current version) for check-and-set.
path "secret/metadata/apps/my-app/billing" {
  capabilities = ["read"]
}
