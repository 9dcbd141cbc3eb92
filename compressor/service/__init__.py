"""service/: `compress serve`, compressor as a job service, and the client that `compress submit` and
`compress jobs` use.

The server process holds the job store and the HTTP API; Ray runs the jobs. Modules: `config` (the server's home,
datasets by name, limits), `store` (the SQLAlchemy job store, its Alembic `migrations/` run on start), `auth`
(bearer tokens, stored hashed), `artifacts` (the artifact store: a local directory behind a small interface),
`intake` (what a client may submit: teacher uploads, recipes without server paths), `reports` (report.json read in
one place, the typed report and a job's summary), `schemas` (the API's pydantic models), `runner` (the Ray
dispatcher: resources, attempts, reconciliation on start), `worker` (what runs inside a Ray worker: the same
`distill` job as the CLI), `app` (the FastAPI application), `routes` (the /v1 routers: health, teachers, jobs),
`events` (progress as JSON and as server-sent events), `web` (the server-rendered pages), `client` (the HTTP
client, standard library only). Heavy dependencies (fastapi, sqlalchemy, ray) are imported inside this package
only, so the rest of compressor works without them. May import everything above it (core, recipe, teachers, jobs).
"""
