"""clrk_extproc: Envoy's ext_proc service (L7 deny answers, `egress.http` records) and
its gRPC access-log service (`egress.tcp` records).  Pure parts: `deny`, `exchange`,
`tcp_log`; the gRPC shell: `server`."""
