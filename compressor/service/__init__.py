"""service/: `compress serve`, compressor as a job service, and the client that `compress submit` and
`compress jobs` use.

The server process holds the HTTP API and a dispatcher; the job store (SQLite, or PostgreSQL shared by several
servers) is the truth about jobs; Ray runs them, on one machine or a cluster; the artifact store (a directory or any
fsspec URL such as s3://) holds teachers, checkpoints and artifacts so any node can resume any job. Modules:
`config` (the server's home, datasets by name, limits), `store` (the SQLAlchemy job store, its Alembic
`migrations/` run on start, versioned rows), `auth` (bearer tokens, stored hashed, with quotas), `artifacts` (the
artifact store behind fsspec), `intake` (what a client may submit: teacher uploads, recipes without server paths),
`reports` (report.json read in one place, the typed report and a job's summary), `schemas` (the API's pydantic
models), `submit` (a job's submission: idempotency, resources, quota, timeout), `placement` (the Ray resources a job needs, and why it waits), `dispatch` (the dispatcher's decisions as
store transactions), `runner` (the Ray side: board, attempts, hand-over), `retention` (expired jobs removed),
`worker` (what runs inside a Ray worker: the same `distill` job as the CLI), `sync` (a worker's files to and from
the artifact store), `deps` (what the routes share: refusals, the caller, a visible job), `app` (the FastAPI application), `routes` (the /v1 routers: health, teachers, jobs), `events`
(progress as JSON and as server-sent events), `web` (the server-rendered pages), `client` (the HTTP client,
standard library only). Heavy dependencies (fastapi, sqlalchemy, ray, fsspec) are imported inside this package
only, so the rest of compressor works without them. May import everything above it (core,
recipe, teachers, models, report, jobs).
"""
