# medguard-audit-anchor: the audit writer. Keeps the latest signed head of each lake's audit chain in KV v2 at
# medguard-audit/anchors/<lake id> (storage_security/audit/_anchor.py, VaultKVAnchor), outside the lake, so a
# tail of events cut with its heads is seen by `medguard audit verify`. No other role writes there: not the
# pipeline, de-identification or key rotation (whose lake access could otherwise cut the tail and move the anchor
# back), and nobody may delete or destroy versions or touch metadata (that takes an operator token).

path "medguard-audit/data/anchors/*" {
  capabilities = ["create", "update", "read"]
}
