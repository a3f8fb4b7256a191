# Vault policy for sever: least privilege. It lets sever read no secret.
#
#   vault policy write sever integrations/vault/sever-policy.hcl
#
# For HashiCorp Vault. For OpenBao use sever-policy-openbao.hcl: OpenBao refuses this file
# because of stanzas 3 and 4 (`subscribe`, `subscribe_event_types`). That file holds the other
# stanzas, unchanged; tests/openbao_policy.rs checks that they stay the same.
#
# sever never reads a password. It does not need database/creds/* (dynamic credentials),
# database/static-creds/* (static role passwords) or <mount>/data/* (kv-v2 secret values).
# Do not add them.
#
# Paths assume the database secrets engine is mounted at `database/` and kv-v2 at `secret/`.
# Mounted elsewhere (e.g. `postgres-prod/`): replace the mount segment in every path below.
# For each further database mount sever watches, copy stanzas 1 and 2 and the `database/*`
# stanza of 4 with that mount's name.
#
# Enterprise namespaces: write this policy in the namespace sever logs in to
# (`vault policy write -namespace=admin/team sever ...`). Paths are relative to that
# namespace. For credentials in child namespaces, prefix the paths with the child's path
# relative to it (e.g. `child/database/static-roles/*`); we have not tested this.
#
# Nothing here has been checked against a running HashiCorp Vault: no Vault binary can run
# where sever is tested. Stanzas 1, 2, 5 and 6, as the OpenBao file, are loaded into OpenBao
# 2.7.2 (Vault's open-source fork, same policy language) by the tests. Stanzas 3 and 4 are
# the least certain; see the notes on them.
# Vault versions: stanzas 1, 2, 5 and 6 work on every edition and version. Stanzas 3 and 4
# need Vault Enterprise 1.16 or later (event notifications, the `subscribe` capability and
# `subscribe_event_types`). Remove them on Community edition and on older versions. We
# expect `vault policy write` to reject the `subscribe` capability and the
# `subscribe_event_types` key on versions that do not know them.

# 1. Watcher and event resolution: read each static role sever is mapped to.
#    GET database/static-roles/<role> returns username, db_name, last_vault_rotation and
#    rotation_period or rotation_schedule. It does not return the password.
#    You can narrow `*` to the configured role names, one stanza each.
path "database/static-roles/*" {
  capabilities = ["read"]
}

# 2. Discovery: list the static role names (e.g. to check the config against Vault).
#    LIST database/static-roles returns names only.
path "database/static-roles" {
  capabilities = ["list"]
}

# 3. Subscriber (Enterprise 1.16+): open the event websocket.
#    sever connects to /v1/sys/events/subscribe/<event type>?json=true, once per entry of
#    [vault.subscriber] event_types. That endpoint needs `read` on the matching path, nothing
#    more. If you change event_types, change these paths to match.
path "sys/events/subscribe/database/*" {
  capabilities = ["read"]
}

path "sys/events/subscribe/kv-v2/data-write" {
  capabilities = ["read"]
}

# 4. Subscriber (Enterprise 1.16+): which events Vault delivers on that websocket.
#    Vault checks every event, one by one, against the event's `data_path` metadata. The
#    token needs `subscribe` on that path, and the event type must match an entry of
#    `subscribe_event_types`. Events that fail the check are dropped silently. The websocket
#    stays open and simply gets no events.
#
#    kv-v2: data_path is `<mount>/data/<kv_path>`. Grant one stanza per mapped kv_path (or a
#    prefix with `*`). Do NOT add `read` here: sever does not need the value, and Vault's
#    docs warn that future versions may put the secret into the event when the token can
#    read it.
path "secret/data/apps/legacy/db" {
  capabilities = ["subscribe"]
  subscribe_event_types = ["kv-v2/data-write"]
}

#    database: Vault's docs list the metadata of database/* events as modified, operation,
#    path, name (no data_path). In the Vault source we read (http/events.go), a non-root
#    token gets no events that lack a data_path. If your version sends database events
#    without one, sever's subscriber will receive none of them whatever this policy says.
#    The watcher still catches every static-role rotation. Vault Secrets Operator grants
#    `subscribe` on the whole mount for these events, and so do we. This grants no read.
#    Vault uses the most specific matching stanza: for a data_path under
#    database/static-roles/, stanza 1 wins and has no `subscribe`. If your version's
#    events carry such a path, add "subscribe" and the same subscribe_event_types to stanza 1.
#    Widen the list to "database/*" if you want every database event in sever's audit trail.
path "database/*" {
  capabilities = ["subscribe"]
  subscribe_event_types = ["database/rotate", "database/rotate-fail", "database/static-creds-create"]
}

# 5. sever's own token: look itself up (TTL, renewable) and renew before it expires.
#    Vault's built-in `default` policy grants both already. They are repeated here so
#    sever still works with tokens created with no_default_policy / token_no_default_policy.
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

# AppRole and Kubernetes logins (auth/approle/login, auth/kubernetes/login) need no policy.
