"""The gRPC surface: servicers that validate, convert and delegate to the executor.

Modules, one job each:

- access: which listeners check bearer tokens
- admin_token: the first admin token, made once and reused
- auth: bearer tokens with roles, checked by an interceptor before any handler
- convert: protobuf messages to domain types and back; nothing else crosses the layer
- errors: the one place where domain errors become gRPC status codes
- health: grpc.health.v1, open to every caller, whose watches never hold each other up
- identity: who is calling, for what is scoped to a caller
- limits: the API's bounds (open streams, request size)
- redact: env values hidden from viewers
- server: the grpc.aio server with JobService, health and reflection
- service: JobService's handlers
- sockets: the unix socket's place on disk
"""
