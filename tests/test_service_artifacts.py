"""The artifact store on a local directory and on a real S3 API server (moto's standalone server): the same
tests on both. Teachers go in streamed and come out whole; a job's listing hides the run record, temporaries and
the training state and refuses names it does not list; the log reads from an offset; a run's files reach the
store as it commits them, so that another node fetching them resumes as from its own folder; retention removes
what expired and nothing else (with the job store on SQLite for the directory, on PostgreSQL for S3)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tracemalloc

import pytest
from sqlalchemy import select

from compressor.core.fileio import append_jsonl, on_written, write_text
from compressor.core.runrecord import RECORD_NAME, RunRecord
from compressor.service import retention
from compressor.service.artifacts import Artifacts, HashMismatch, UploadTooLarge, store_options
from compressor.service.store import Job, Store, Teacher, Token, now
from compressor.service.sync import Fence, StoreSync, fetch_state

from .service_backends import Postgres, S3Server, s3_env


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    with s3_env():
        yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Artifacts:
    if request.param == "local":
        return Artifacts(tmp_path / "artifacts", spool=tmp_path / "spool")
    s3 = request.getfixturevalue("s3")
    url = s3.bucket() + "/compressor"
    return Artifacts(url, store_options(url, s3.endpoint), spool=tmp_path / "spool")


def _upload(store: Artifacts, data: bytes, limit: int = 1 << 30) -> str:
    sha = hashlib.sha256(data).hexdigest()
    up = store.upload(limit)
    for i in range(0, len(data), 65536):
        up.write(data[i:i + 65536])
    store.keep_teacher(up.finish(sha), sha)
    return sha


def test_a_teacher_goes_in_streamed_and_comes_out_whole(store):
    store.check()
    data = os.urandom(3 * 1024 * 1024 + 7)
    sha = _upload(store, data)
    assert store.has_teacher(sha) and not store.has_teacher("0" * 64)
    assert b"".join(store.stream(store.teacher_key(sha), chunk=65536)) == data
    assert not list(store.spool.iterdir())  # nothing left on the server's disk
    up = store.upload(limit=100)
    with pytest.raises(UploadTooLarge):
        up.write(b"x" * 101)
    up = store.upload(limit=1000)
    up.write(b"abc")
    with pytest.raises(HashMismatch):
        up.finish("0" * 64)
    assert not list(store.spool.iterdir())


def test_a_jobs_listing_log_and_deletion(store):
    out = store.job_key("j1", "out")
    for name, body in {"student.onnx": b"onnx", "figures/curves.png": b"png", "train_state.pt": b"state",
                       RECORD_NAME: b"{}", ".student.onnx.abcdefgh.tmp": b"half"}.items():
        store.put_bytes(body, f"{out}/{name}")
    assert store.list("j1") == [{"name": "figures/curves.png", "size": 3}, {"name": "student.onnx", "size": 4}]
    assert store.read_artifact("j1", "student.onnx") == b"onnx"
    for refused in ("train_state.pt", RECORD_NAME, "../j1/out/student.onnx", "figures", "nothing"):
        assert store.artifact("j1", refused) is None
    store.put_bytes(b"line one\nline two\n", store.job_key("j1", "job.log"))
    assert store.read_log("j1") == ("line one\nline two\n", 18)
    assert store.read_log("j1", 9) == ("line two\n", 18) and store.read_log("j1", 18) == ("", 18)
    assert store.read_log("j1", 0, limit=12) == ("line one\n", 9)  # cut at a line's end
    assert store.read_log("other") == ("", 0)
    store.delete_job("j1")
    assert store.list("j1") == [] and store.read_log("j1") == ("", 0)


def test_a_run_ships_each_committed_file_and_another_node_resumes_from_them(store, tmp_path):
    """What a worker does: the run's files (written through core.fileio, recorded by its run record) reach the
    store as each is committed; a fresh folder fetched from the store is owned by that record, byte for byte."""
    out = tmp_path / "node-a" / "out"
    out.mkdir(parents=True)
    sync = StoreSync(store, "j2", out, Fence())
    with on_written(sync):  # outside the run's own record hook, as the worker registers it
        record = RunRecord.start(out / RECORD_NAME, out)
        with record.recording():
            write_text(out / "train_state.pt", "epoch 1")
            append_jsonl(out / "metrics.jsonl", {"epoch": 1})
            write_text(out / "train_state.pt", "epoch 2")
    names = set(store.files(store.job_key("j2", "out")))
    assert names == {RECORD_NAME, "train_state.pt", "metrics.jsonl"}
    record.finish("running")
    sync.finish()
    node_b = tmp_path / "node-b" / "out"
    node_b.mkdir(parents=True)
    assert sorted(fetch_state(store, "j2", node_b)) == [RECORD_NAME, "metrics.jsonl", "train_state.pt"]
    again = RunRecord.read(node_b / RECORD_NAME, node_b)
    assert again.owns("train_state.pt") and again.owns("metrics.jsonl")
    assert (node_b / "train_state.pt").read_text() == "epoch 2"
    # a closed fence (the worker's server is gone) writes nothing more
    sync.fence.lost.set()
    with on_written(sync):
        write_text(out / "train_state.pt", "epoch 3")
    assert store.read_bytes(store.job_key("j2", "out", "train_state.pt")) == b"epoch 2"


def test_the_store_never_holds_a_file_its_record_does_not_own(store, tmp_path):
    """After every single commit the store's record owns the store's files: a worker killed at any point leaves a
    state another node can resume from."""
    out = tmp_path / "out"
    out.mkdir()
    seen = []

    class Check:
        def prepare(self, path, digest):
            pass

        def commit(self, path):  # runs after StoreSync's commit: look at the store as another node would
            copy = tmp_path / f"copy{len(seen)}"
            copy.mkdir()
            fetch_state(store, "j3", copy)
            record = RunRecord.read(copy / RECORD_NAME, copy)
            seen.append(all(record.owns(p.relative_to(copy).as_posix()) for p in copy.rglob("*")
                            if p.is_file() and p.name != RECORD_NAME))

    with on_written(StoreSync(store, "j3", out, Fence())), on_written(Check()):
        record = RunRecord.start(out / RECORD_NAME, out)
        with record.recording():
            for epoch in range(3):
                write_text(out / "train_state.pt", f"state {epoch}")
                append_jsonl(out / "metrics.jsonl", {"epoch": epoch})
            write_text(out / "student.onnx", "model")
    assert seen == [True] * 7


def test_a_large_upload_does_not_sit_in_memory(store, tmp_path):
    """64 MiB through Upload and keep_teacher: Python's allocations stay far below the file's size (parts of
    8 MiB, two at a time, go to an object store; a local store copies file to file)."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    sha = hashlib.sha256(big.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        up = store.upload(1 << 30)
        with open(big, "rb") as f:
            while chunk := f.read(65536):
                up.write(chunk)
        store.keep_teacher(up.finish(sha), sha)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40 * (1 << 20), f"peak {peak / (1 << 20):.1f} MiB for a 64 MiB upload"
    assert store.size(store.teacher_key(sha)) == 64 << 20


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres().start()
    yield pg
    pg.stop()


def test_retention_removes_what_expired_and_nothing_else(store, request, tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}" if store.local else request.getfixturevalue("postgres").create()
    db = Store(url)
    db.migrate()
    long_ago, recently = now() - dt.timedelta(days=40), now() - dt.timedelta(days=2)
    with db.session() as s:
        s.add(Token(id=1, name="t", token_hash="h" * 64, admin=False))
        s.flush()
        for sha, used in (("a" * 64, long_ago), ("b" * 64, recently), ("c" * 64, long_ago)):
            s.add(Teacher(sha256=sha, size=1, filename="t.pt", format="state_dict", uploaded_by=1,
                          created_at=long_ago, last_used_at=used))
        s.flush()
        for job_id, state, finished, teacher in (("old", "succeeded", long_ago, "a"), ("new", "failed", recently, "b"),
                                                 ("run", "running", None, "c"), ("oldq", "cancelled", long_ago, "a")):
            s.add(Job(id=job_id, token_id=1, request_hash="h", teacher_sha256=teacher * 64, teacher_name="t.pt",
                      recipe_yaml="", overrides=[], recipe={}, recipe_name="r", dataset="d", device="cpu",
                      num_cpus=1, num_gpus=0, state=state, reason="r", attempts=1, max_attempts=3, progress_seq=0,
                      problems=[], finished_at=finished))
    for sha in "abc":
        store.put_bytes(b"t", store.teacher_key(sha * 64))
    for job_id in ("old", "new", "run", "oldq"):
        store.put_bytes(b"x", store.job_key(job_id, "out", "student.onnx"))
    removed = retention.sweep(db, store, days=30)
    assert sorted(removed["jobs"]) == ["old", "oldq"] and removed["teachers"] == ["a" * 64]
    with db.session() as s:
        assert sorted(j.id for j in s.scalars(select(Job))) == ["new", "run"]
        assert s.get(Teacher, "a" * 64) is None and s.get(Teacher, "c" * 64) is not None  # c: a job still uses it
    assert store.list("old") == [] and store.list("new") and store.list("run")
    assert not store.has_teacher("a" * 64) and store.has_teacher("b" * 64) and store.has_teacher("c" * 64)
    assert retention.sweep(db, store, days=30) == {"jobs": [], "teachers": []}  # a second sweep finds nothing
    db.close()
