"""The FastAPI application: its parts (store, artifacts, runner) on `app.state`, the caller's token as a
dependency, and every refusal as one JSON shape: `{"detail": "<one line>", "problems": ["<line>", ...]}`.

    app = create_app(cfg)           # the runner (Ray) starts with the app and stops with it
    uvicorn.run(app, host=cfg.host, port=cfg.port)
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from compressor.service import auth
from compressor.service.config import ServerConfig, version
from compressor.service.deps import ApiError, problem
from compressor.service.store import Store


def create_app(cfg: ServerConfig, *, run_jobs: bool = True) -> FastAPI:
    """The service. `run_jobs=False` leaves Ray out (the store and the API only: for tests of the API's checks)."""
    from compressor.service import events, routes, web
    from compressor.service.runner import Runner

    cfg.prepare()
    store = Store(cfg.url)
    store.migrate()
    artifacts = cfg.artifacts()
    runner = Runner(cfg, store, artifacts) if run_jobs else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if runner is not None:
            runner.start()
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()
            store.close()

    app = FastAPI(title="compressor", version=version(), lifespan=lifespan,
                  description="Distil a teacher into a verified ONNX student, as a job service. Every call but "
                              "/v1/health needs `Authorization: Bearer <token>` (`compress serve token create`).")
    app.state.cfg, app.state.store, app.state.artifacts, app.state.runner = cfg, store, artifacts, runner

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, e: ApiError):
        return problem(e.status, e.problems, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, e: RequestValidationError):
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"] if p != "body") or "request"
            lines.append(f"{where}: {err['msg']}")
        return problem(422, lines or ["invalid request"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, e: StarletteHTTPException):
        return problem(e.status_code, [str(e.detail)])

    app.include_router(routes.router)
    app.include_router(events.router)
    app.include_router(web.router)
    return app


def serve(cfg: ServerConfig) -> None:
    """`compress serve`: migrate the store, refuse to listen beyond loopback without tokens, run uvicorn."""
    import uvicorn

    from compressor.core.errors import UserError, first_line
    from compressor.core.progress import console
    from compressor.service.config import is_loopback

    cfg.prepare()
    try:
        store = Store(cfg.url)
        store.migrate()
    except ImportError as e:  # a database driver that is not installed
        raise UserError(f"--db: no driver for {cfg.url.split('://')[0]} ({e.name} is missing)") from None
    except Exception as e:  # the database cannot be reached, or refuses
        raise UserError(f"--db: cannot open the job store ({type(e).__name__}: {first_line(e)})") from None
    tokens = auth.token_count(store)
    store.close()
    try:
        artifacts = cfg.artifacts()
        artifacts.check()
    except ImportError as e:
        raise UserError(f"--artifacts: no fsspec implementation for {cfg.store_url} ({e})") from None
    except Exception as e:
        raise UserError(f"--artifacts: cannot reach the artifact store {cfg.store_url} "
                        f"({type(e).__name__}: {first_line(e)})") from None
    if tokens == 0 and not is_loopback(cfg.host):
        raise UserError(f"--host {cfg.host}: no tokens are configured, so the server listens on loopback only; "
                        "create one first (compress serve token create NAME)")
    if tokens == 0:
        console.print("no tokens yet: every call but /v1/health needs one; create it with "
                      "`compress serve token create NAME [--admin]`")
    engine = f"Ray at {cfg.ray_address}" if cfg.ray_address else (
        f"a local Ray ({cfg.ray_cpus or 'all'} CPUs)")
    console.print(f"compress serve: http://{cfg.host}:{cfg.port}/ (API /v1, OpenAPI /docs); home {cfg.home}; "
                  f"store {cfg.url.split('://')[0]}; artifacts {artifacts.describe()}; jobs on {engine}; "
                  f"datasets {', '.join(sorted(cfg.datasets))}", highlight=False)
    if cfg.ray_address and artifacts.local:
        console.print(f"note: the artifact store is the local directory {artifacts.root}: every node of the Ray "
                      "cluster must see it at that path (a shared filesystem), else use --artifacts s3://...",
                      highlight=False)
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=10)
