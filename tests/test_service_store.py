"""The job store and the server's start-up rules, without Ray, on SQLite and on a real PostgreSQL server: the
migrations build exactly the models' schema and keep old rows on upgrade, tokens are stored hashed, concurrent
writers lose no update, two dispatchers never start one job twice nor overfill the cluster, a dead server's jobs
are taken over and a live one's are not, a job whose worker kind no node has waits saying so (and an attempt Ray
could not place does not count), and a server without tokens refuses to listen beyond loopback."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading

import pytest
from sqlalchemy import create_engine, func, select, text

from compressor.service import dispatch, migrations
from compressor.service.auth import caller_for, create_token, digest
from compressor.service.placement import Cluster
from compressor.service.store import Job, Lock, Server, Store, Teacher, Token, now

from .conftest import run_cli
from .service_backends import Postgres


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return request.getfixturevalue("postgres").create()


def test_migrations_build_the_models_schema(db_url):
    engine = create_engine(db_url)
    migrations.upgrade(engine)
    assert migrations.current(engine) == "0002"
    assert migrations.differences(engine) == []  # models and migrations agree: a model change needs a migration
    with engine.connect() as c:
        assert c.execute(text("SELECT name FROM locks")).scalars().all() == ["dispatch"]
    engine.dispose()


def test_an_upgrade_keeps_the_jobs_of_an_older_store(db_url):
    """A store written at the first revision keeps its rows through every later migration (run on each start)."""
    engine = create_engine(db_url)
    migrations.upgrade(engine, "0001")
    false = "false" if engine.dialect.name == "postgresql" else "0"
    with engine.begin() as c:
        c.execute(text(f"INSERT INTO tokens (id, name, token_hash, admin, created_at) VALUES "
                       f"(1, 'old', :h, {false}, '2026-01-01 00:00:00')"), {"h": digest("cmp_old")})
        c.execute(text("INSERT INTO teachers (sha256, size, filename, format, uploaded_by, created_at) VALUES "
                       "(:s, 1, 't.pt', 'state_dict', 1, '2026-01-01 00:00:00')"), {"s": "a" * 64})
        c.execute(text(
            "INSERT INTO jobs (id, token_id, request_hash, teacher_sha256, teacher_name, recipe_yaml, overrides, "
            "recipe, recipe_name, dataset, device, num_cpus, num_gpus, state, reason, attempts, max_attempts, "
            "cancel_requested, problems, progress_seq, created_at) VALUES ('jold', 1, 'h', :s, 't.pt', 'name: x', "
            f"'[]', '{{}}', 'x', 'fashion_mnist', 'cpu', 2, 0, 'succeeded', 'every gate passed', 1, 3, {false}, "
            "'[]', 0, '2026-01-01 00:00:00')"), {"s": "a" * 64})
    engine.dispose()
    store = Store(db_url)
    store.migrate()  # what `compress serve` does on start
    with store.session() as s:
        job = store.job(s, "jold")
        assert job.state == "succeeded" and job.owner.name == "old"
        assert job.version == 1 and job.needs == {"CPU": 2} and job.timed_out is False  # filled in for old rows
    assert caller_for(store, "cmp_old").name == "old"
    store.close()


def test_tokens_are_stored_hashed_and_printed_once(db_url, tmp_path):
    r = run_cli("serve", "token", "create", "ci-main", "--home", tmp_path, "--db", db_url, "--max-queued", "5")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    store = Store(db_url)
    with store.session() as s:
        stored = [(t.name, t.token_hash, t.admin, t.max_queued) for t in s.scalars(select(Token))]
    assert stored == [("ci-main", digest(token), False, 5)]
    if db_url.startswith("sqlite"):
        assert token not in (tmp_path / "jobs.db").read_bytes().decode("latin-1")
    again = run_cli("serve", "token", "create", "ci-main", "--home", tmp_path, "--db", db_url)
    assert again.returncode == 2 and "token name 'ci-main' is taken" in again.stderr
    assert caller_for(store, token).name == "ci-main"
    assert caller_for(store, token + "x") is None and caller_for(store, "") is None
    assert create_token(store, "admin", admin=True).startswith("cmp_")
    store.close()


def _store_with_jobs(url: str, n: int, cpus: int = 1) -> Store:
    store = Store(url)
    store.migrate()
    with store.session() as s:
        s.add(Token(id=1, name="t", token_hash="h" * 64, admin=False))
        s.flush()
        s.add(Teacher(sha256="a" * 64, size=1, filename="t.pt", format="state_dict", uploaded_by=1))
        s.flush()
        for i in range(n):
            s.add(Job(id=f"j{i:03d}", token_id=1, request_hash="h", teacher_sha256="a" * 64, teacher_name="t.pt",
                      recipe_yaml="", overrides=[], recipe={}, recipe_name="r", dataset="fashion_mnist", device="cpu",
                      num_cpus=cpus, num_gpus=0, resources={"CPU": cpus}, state="queued", reason="queued",
                      attempts=0, max_attempts=3, progress_seq=0, problems=[],
                      created_at=now() + dt.timedelta(microseconds=i)))
    return store


def test_concurrent_writers_lose_no_update(db_url):
    """Progress from a dispatcher and a cancel from the API, at once on one row, many times: every progress
    event is counted and the cancel survives (an UPDATE that finds another version runs again)."""
    store = _store_with_jobs(db_url, 1)
    store.write(lambda s: setattr(s.get(Job, "j000"), "state", "running") or
                setattr(s.get(Job, "j000"), "server_id", "me") or setattr(s.get(Job, "j000"), "attempts", 1))
    errors = []

    def progress(k: int) -> None:
        try:
            for step in range(40):
                dispatch.record_events(store, "me", [("j000", 1, {"kind": "progress", "phase": "training",
                                                                  "step": step, "by": k})])
        except Exception as e:  # pragma: no cover - the assertion below shows it
            errors.append(e)

    threads = [threading.Thread(target=progress, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    dispatch.cancel(store, "j000", "alice")
    for t in threads:
        t.join()
    assert errors == []
    with store.session() as s:
        job = s.get(Job, "j000")
        assert job.progress_seq == 160 and job.cancel_requested is True
        assert job.version == 1 + 1 + 160 + 1  # every change was one UPDATE of its own version
    store.close()


def _dispatcher(url: str, server_id: str, capacity: int, out, barrier) -> None:
    """One server's dispatcher in its own process, in rounds run in step with the other's: both claim at once (a
    race for the same queued jobs every round, whoever wins it), then finish what they started, until none is
    left."""
    store = Store(url)
    cluster = Cluster([{"CPU": float(capacity)}])
    store.write(lambda s: s.scalar(select(func.count()).select_from(Job)))  # connected and warm
    mine, most, rounds = [], 0, 0
    while True:
        barrier.wait(120)  # both claim together
        started = dispatch.claim(store, server_id, cluster)
        with store.session() as s:
            most = max(most, s.scalar(select(func.count()).select_from(Job).where(Job.state == "running")))
        mine += [spec["job_id"] for spec in started]
        for spec in started:
            dispatch.finish_attempt(store, server_id, spec["job_id"], spec["attempt"],
                                    {"outcome": "succeeded", "exit_code": 0, "problems": []})
        rounds += 1
        barrier.wait(120)  # both finished this round's jobs: both read the same count below
        with store.session() as s:
            if not s.scalar(select(func.count()).select_from(Job).where(Job.state != "succeeded")):
                break
    out.put((server_id, mine, most, rounds))
    store.close()


def test_two_dispatchers_never_start_one_job_twice_nor_overfill_the_cluster(db_url):
    store = _store_with_jobs(db_url, 40)
    store.close()
    ctx = multiprocessing.get_context("spawn")
    out, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_dispatcher, args=(db_url, sid, 3, out, barrier)) for sid in ("server-a", "server-b")]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    claimed = [job for _, mine, _, _ in results for job in mine]
    assert sorted(claimed) == [f"j{i:03d}" for i in range(40)]  # every job started, none twice
    assert all(most <= 3 for _, _, most, _ in results)  # never more running than the cluster holds
    # the two raced in every round (which one won a round, and whether the loser's claim came after the winner had
    # finished its 3, is the scheduler's choice: not asserted, since under load one process can win them all)
    assert len({rounds for *_, rounds in results}) == 1 and results[0][3] >= 40 // 6
    store = Store(db_url)
    with store.session() as s:
        jobs = list(s.scalars(select(Job)))
        assert {j.state for j in jobs} == {"succeeded"} and {j.attempts for j in jobs} == {1}
        assert {len(j.runs) for j in jobs} == {1}
    store.close()


def test_a_dead_servers_jobs_are_taken_over_and_a_live_ones_are_not(db_url):
    store = _store_with_jobs(db_url, 2)
    old = now() - dt.timedelta(seconds=120)
    with store.session() as s:
        s.add(Server(id="dead", host="elsewhere", pid=1, url="u", engine="e", heartbeat_at=old))
        s.add(Server(id="live", host="elsewhere", pid=1, url="u", engine="e"))
    started = dispatch.claim(store, "dead", Cluster([{"CPU": 1.0}]))
    started += dispatch.claim(store, "live", Cluster([{"CPU": 2.0}]))
    assert [spec["job_id"] for spec in started] == ["j000", "j001"]
    assert dispatch.take_over(store, "me", lease=30) == ["j000"]
    with store.session() as s:
        taken, kept = s.get(Job, "j000"), s.get(Job, "j001")
        assert taken.state == "queued" and taken.server_id is None and taken.runs[-1].outcome == "lost"
        assert "resumes from its last checkpoint" in taken.reason and taken.failed_attempts == 1
        assert kept.state == "running" and kept.server_id == "live"
        assert s.get(Server, "dead") is None and s.scalar(select(Lock.holder)) == "live"
    store.close()


def test_without_tokens_the_server_keeps_to_loopback(tmp_path):
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "1", "--home", tmp_path)
    assert r.returncode == 2
    assert "no tokens are configured, so the server listens on loopback only" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_dataset_option_is_refused_before_anything_starts(tmp_path):
    r = run_cli("serve", "--dataset", "cub", "--dataset", f"birds={tmp_path / 'missing'}", "--home", tmp_path)
    assert r.returncode == 2
    assert "--dataset cub: expected NAME=PATH" in r.stderr and "is not a directory" in r.stderr


@pytest.mark.parametrize("flag, value, says", [
    ("--db", "postgresql+psycopg://nobody@127.0.0.1:1/none", "--db: cannot open the job store"),
    ("--db", "mysql+nosuchdriver://x/y", "--db: "),
    ("--artifacts", "nosuchproto://bucket/x", "--artifacts: "),
])
def test_an_unreachable_store_is_one_line_before_anything_starts(tmp_path, flag, value, says):
    r = run_cli("serve", "--home", tmp_path, flag, value, "--port", "1")
    assert r.returncode == 2, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_job_whose_node_is_gone_waits_for_one_saying_why_and_an_unplaced_attempt_does_not_count(db_url):
    """The node of kind `edge` dies: its attempt died (counted, the job re-queued to resume), then no node has
    `edge` (queued, saying so first and keeping why it was re-queued); an attempt Ray could not place any more is
    withdrawn without counting; a new `edge` node -> the job starts again as attempt 2."""
    store = _store_with_jobs(db_url, 1)
    with store.session() as s:
        s.get(Job, "j000").resources = {"CPU": 1.0, "edge": 1.0}
    with_edge, without = Cluster([{"CPU": 2.0}, {"CPU": 1.0, "edge": 1.0}]), Cluster([{"CPU": 2.0}])
    assert [spec["attempt"] for spec in dispatch.claim(store, "srv", with_edge)] == [1]
    dispatch.finish_attempt(store, "srv", "j000", 1, {"outcome": "died", "problems": ["the node died"]})
    assert dispatch.claim(store, "srv", without) == []
    edge = "waiting for a node of kind edge (Ray resource 'edge'): no node of the Ray cluster has it now"
    with store.session() as s:
        job = s.get(Job, "j000")
        assert job.state == "queued" and job.attempts == 1 and job.failed_attempts == 1
        assert job.reason.startswith(edge + "; earlier: the worker died during attempt 1 (the node died)")
    assert dispatch.claim(store, "srv", without) == []  # asked again: the same reason, not nested
    with store.session() as s:
        assert s.get(Job, "j000").reason.count("; earlier: ") == 1
    # the cluster still listed the dead node when attempt 2 started; Ray could not place it and it was withdrawn
    assert [spec["attempt"] for spec in dispatch.claim(store, "srv", with_edge)] == [2]
    dispatch.finish_attempt(store, "srv", "j000", 2, {"outcome": "unplaced", "problems": [edge]})
    with store.session() as s:
        job = s.get(Job, "j000")
        assert (job.state, job.reason, job.attempts, len(job.runs)) == ("queued", edge, 1, 1)
    assert [spec["attempt"] for spec in dispatch.claim(store, "srv", with_edge)] == [2]  # a new edge node
    with store.session() as s:
        job = s.get(Job, "j000")
        assert job.state == "running" and [run.outcome for run in job.runs] == ["died", None]
    store.close()
