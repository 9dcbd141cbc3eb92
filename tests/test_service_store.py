"""The job store and the server's start-up rules, without Ray: the migrations build exactly the models' schema and
keep old rows on upgrade, tokens are stored hashed, and a server without tokens refuses to listen beyond
loopback (checked before it binds anything)."""

from __future__ import annotations

import sqlite3

from sqlalchemy import create_engine, text

from compressor.service import migrations
from compressor.service.auth import caller_for, create_token, digest
from compressor.service.store import Store

from .conftest import run_cli


def test_migrations_build_the_models_schema(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrations.upgrade(engine)
    assert migrations.current(engine) == "0001"
    assert migrations.differences(engine) == []  # models and migrations agree: a model change needs a migration


def test_an_upgrade_keeps_the_jobs_of_an_older_store(tmp_path):
    """A store written at the first revision keeps its rows through every later migration (run on each start)."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    engine = create_engine(url)
    migrations.upgrade(engine, "0001")
    with engine.begin() as c:
        c.execute(text("INSERT INTO tokens (id, name, token_hash, admin, created_at) VALUES "
                       "(1, 'old', :h, 0, '2026-01-01 00:00:00')"), {"h": digest("cmp_old")})
        c.execute(text("INSERT INTO teachers (sha256, size, filename, format, uploaded_by, created_at) VALUES "
                       "(:s, 1, 't.pt', 'state_dict', 1, '2026-01-01 00:00:00')"), {"s": "a" * 64})
        c.execute(text(
            "INSERT INTO jobs (id, token_id, request_hash, teacher_sha256, teacher_name, recipe_yaml, overrides, "
            "recipe, recipe_name, dataset, device, num_cpus, num_gpus, state, reason, attempts, max_attempts, "
            "cancel_requested, problems, progress_seq, created_at) VALUES ('jold', 1, 'h', :s, 't.pt', 'name: x', "
            "'[]', '{}', 'x', 'fashion_mnist', 'cpu', 1, 0, 'succeeded', 'every gate passed', 1, 3, 0, '[]', 0, "
            "'2026-01-01 00:00:00')"), {"s": "a" * 64})
    store = Store(url)
    store.migrate()  # what `compress serve` does on start
    with store.session() as s:
        job = store.job(s, "jold")
        assert job.state == "succeeded" and job.owner.name == "old"
    assert caller_for(store, "cmp_old").name == "old"


def test_tokens_are_stored_hashed_and_printed_once(tmp_path):
    r = run_cli("serve", "token", "create", "ci-main", "--home", tmp_path)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    with sqlite3.connect(tmp_path / "jobs.db") as db:
        stored = db.execute("SELECT name, token_hash, admin FROM tokens").fetchall()
    assert stored == [("ci-main", digest(token), 0)]
    assert token not in (tmp_path / "jobs.db").read_bytes().decode("latin-1")
    again = run_cli("serve", "token", "create", "ci-main", "--home", tmp_path)
    assert again.returncode == 2 and "token name 'ci-main' is taken" in again.stderr
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    assert caller_for(store, token).name == "ci-main"
    assert caller_for(store, token + "x") is None and caller_for(store, "") is None
    assert create_token(store, "admin", admin=True).startswith("cmp_")


def test_without_tokens_the_server_keeps_to_loopback(tmp_path):
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "1", "--home", tmp_path)
    assert r.returncode == 2
    assert "no tokens are configured, so the server listens on loopback only" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_dataset_option_is_refused_before_anything_starts(tmp_path):
    r = run_cli("serve", "--dataset", "cub", "--dataset", f"birds={tmp_path / 'missing'}", "--home", tmp_path)
    assert r.returncode == 2
    assert "--dataset cub: expected NAME=PATH" in r.stderr and "is not a directory" in r.stderr
