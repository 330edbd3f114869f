"""The Aegis agent: the data mover that runs inside backup and restore Jobs.

It imports neither kopf nor kubernetes, and nothing of the operator: its contract with the
operator is the command line (docs/agent.md), the config JSON (`aegis.agent.config`), the
bucket layout (`aegis.agent.layout`) and the manifest (`aegis.agent.manifest`). The models
both sides share (the camelCase base, ports, S3 encryption and lock, a backup's source) live in
`aegis.agent.wire`, which `aegis.api` builds on.
"""
