# OpenBao policy for sever: least privilege. It lets sever read no secret.
#
#   bao policy write sever integrations/vault/sever-policy-openbao.hcl
#
# For OpenBao. For HashiCorp Vault use sever-policy.hcl: OpenBao refuses that file, because
# its event stanzas (3 and 4) use the `subscribe` capability and `subscribe_event_types`,
# which OpenBao does not know. OpenBao has no event notifications, so sever needs no event
# stanza here. The stanzas below are those of sever-policy.hcl without 3 and 4, numbered as
# there. tests/openbao_policy.rs loads this file into OpenBao 2.7.2 and checks that a token
# holding only it can do what sever needs and cannot read a password.
#
# sever never reads a password. It does not need database/creds/* (dynamic credentials),
# database/static-creds/* (static role passwords) or <mount>/data/* (kv-v2 secret values).
# Do not add them.
#
# Paths assume the database secrets engine is mounted at `database/` and kv-v2 at `secret/`.
# Mounted elsewhere (e.g. `postgres-prod/`): replace the mount segment in every path below.
# For each further database mount sever watches, copy stanzas 1 and 2 with that mount's name.
#
# Namespaces: write this policy in the namespace sever logs in to
# (`bao policy write -namespace=team sever ...`). Paths are relative to that namespace.

# 1. Watcher and event resolution: read each static role sever is mapped to.
#    GET database/static-roles/<role> returns username, db_name, last_vault_rotation and
#    rotation_period. It does not return the password.
#    You can narrow `*` to the configured role names, one stanza each.
path "database/static-roles/*" {
  capabilities = ["read"]
}

# 2. Discovery: list the static role names (e.g. to check the config against OpenBao).
#    LIST database/static-roles returns names only.
path "database/static-roles" {
  capabilities = ["list"]
}

# 5. sever's own token: look itself up (TTL, renewable) and renew before it expires.
#    The built-in `default` policy grants both already. They are repeated here so sever
#    still works with tokens created with no_default_policy / token_no_default_policy.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}

# 6. kv-v2 passwords: read the METADATA of each mapped kv_path (current version, when each
#    version was written), never its data. GET secret/metadata/<kv_path> returns no secret
#    value. Grant one stanza per mapped kv_path (or a prefix with `*`).
path "secret/metadata/apps/legacy/db" {
  capabilities = ["read"]
}

# AppRole logins (auth/approle/login) need no policy.
