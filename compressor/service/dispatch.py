"""The dispatcher's decisions, as transactions on the job store: which queued jobs start, what an attempt's end
means for its job, whose jobs are taken over, which running jobs must stop. No Ray here (the runner does the
Ray side), so several servers' dispatchers can be raced against one database in a test.

Every function is one `Store.write` transaction: it runs again from the start when another server or thread
changed the same rows first, so no update is lost (see `store`). A job's `server_id` says whose dispatcher runs it;
only that server records its events and ends its attempts.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from compressor.service.client import describe as describe_progress
from compressor.service.placement import Cluster, add
from compressor.service.reports import summary
from compressor.service.store import Attempt, Job, Server, Store, now


def heartbeat(store: Store, server_id: str, url: str, engine: str) -> None:
    def beat(s: Session) -> None:
        row = s.get(Server, server_id)
        if row is None:
            s.add(Server(id=server_id, host=socket.gethostname(), pid=os.getpid(), url=url[:255], engine=engine[:255]))
        else:
            row.heartbeat_at = now()

    store.write(beat)


def leave(store: Store, server_id: str) -> None:
    store.write(lambda s: s.execute(delete(Server).where(Server.id == server_id)))


def _gone(server: Server, lease: float) -> bool:
    """A server that stopped beating, or a dead process on this host (a server killed and started again)."""
    if server.heartbeat_at < now() - dt.timedelta(seconds=lease):
        return True
    if server.host == socket.gethostname():
        if server.pid == os.getpid():  # another id with this process's pid: a predecessor's row
            return True
        try:
            os.kill(server.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def take_over(store: Store, server_id: str, lease: float) -> list[str]:
    """Re-queue the running jobs of servers that are gone (their attempts died with them: a Ray driver's tasks end
    with it); returns their ids."""

    def run(s: Session) -> list[str]:
        servers = {row.id: row for row in s.scalars(select(Server))}
        gone = {sid for sid, row in servers.items() if sid != server_id and _gone(row, lease)}
        live = set(servers) - gone
        q = (select(Job).where(Job.state == "running", or_(Job.server_id.is_(None), Job.server_id.not_in(live)))
             .with_for_update(skip_locked=True, of=Job))
        taken = []
        for job in s.scalars(q):
            who = servers.get(job.server_id)
            what = f"the server {who.host}:{who.pid} stopped" if who else "its server stopped"
            end_attempt(job, "lost", f"{what} while it ran")
            retry_or_end(job, f"{what} while attempt {job.attempts} ran")
            taken.append(job.id)
        if gone:
            s.execute(delete(Server).where(Server.id.in_(gone)))
        return taken

    return store.write(run)


def claim(store: Store, server_id: str, cluster: Cluster, infeasible_waits: bool = True) -> list[dict]:
    """Under the dispatch lock: start the queued jobs, oldest first, that the cluster can take now (placement);
    the others get their reason. Returns the attempts this server must now submit to Ray."""

    def run(s: Session) -> list[dict]:
        store.lock(s, "dispatch", server_id)
        running = list(s.scalars(select(Job).where(Job.state == "running")))
        used: dict[str, float] = {}
        for job in running:
            add(used, job.needs)
        started = []
        for job in s.scalars(select(Job).where(Job.state == "queued").order_by(Job.created_at, Job.id)):
            needs = job.needs
            wait = cluster.infeasible_reason(needs) or cluster.busy_reason(needs, used, len(running))
            if wait is None:
                started.append(_start(job, server_id))
                running.append(job)
                add(used, needs)
            else:
                waiting(job, wait)
        return started

    return store.write(run)


RETRIED = ("the worker", "the server", "its server", "handed over", "waiting for an earlier")
EARLIER = "; earlier: "


def waiting(job: Job, wait: str) -> None:
    """A queued job's reason: why it waits now, keeping why it was queued again (a retry) after it."""
    if job.reason.startswith(RETRIED):
        note = EARLIER + job.reason
    else:
        note = job.reason[job.reason.index(EARLIER):] if EARLIER in job.reason else ""
    if job.reason != wait + note:
        job.reason = wait + note


def _start(job: Job, server_id: str) -> dict:
    job.attempts += 1
    resume = job.attempts > 1
    job.runs.append(Attempt(number=job.attempts, resume=resume))
    job.state, job.server_id = "running", server_id
    job.started_at = job.started_at or now()
    job.reason = f"starting a worker for attempt {job.attempts} (it needs {describe_needs(job.needs)})"
    return {"job_id": job.id, "attempt": job.attempts, "resume": resume, "device": job.device,
            "teacher_sha256": job.teacher_sha256, "recipe": job.recipe, "needs": job.needs}


def describe_needs(needs: dict) -> str:
    from compressor.service.placement import describe

    return describe(needs)


def record_events(store: Store, server_id: str, events: list) -> None:
    """The workers' progress events (from this server's board) into their jobs' rows."""

    def run(s: Session) -> None:
        for job_id, attempt, event in events:
            job = s.get(Job, job_id)
            if job is None or job.state != "running" or attempt != job.attempts or job.server_id != server_id:
                continue  # a late event of an attempt that is over
            if event["kind"] == "started":
                run_ = job.runs[-1]
                run_.pid, run_.node = event["pid"], event["node"][:200]
                if not job.cancel_requested and not job.timed_out:
                    job.reason = f"running: attempt {attempt} on {event['node']}"
                continue
            job.progress = {k: v for k, v in event.items() if k != "kind"}
            if event.get("metrics"):
                job.last_metrics = event["metrics"]
            job.progress_seq += 1
            if not job.cancel_requested and not job.timed_out:
                job.reason = f"running: attempt {attempt}, {describe_progress(job.progress)}"

    if events:
        store.write(run)


def to_stop(store: Store, server_id: str) -> list[str]:
    """This server's running jobs that must stop: cancelled by a client, or past their timeout (marked here)."""

    def run(s: Session) -> list[str]:
        stop = []
        for job in s.scalars(select(Job).where(Job.state == "running", Job.server_id == server_id)):
            if not job.timed_out and job.timeout_seconds and ran_seconds(job) > job.timeout_seconds:
                job.timed_out = True
                job.reason = (f"stopping: it ran longer than its timeout ({job.timeout_seconds / 60:g} min); its "
                              "training state is saved")
            if job.cancel_requested or job.timed_out:
                stop.append(job.id)
        return stop

    return store.write(run)


def ran_seconds(job: Job) -> float:
    """Running time over all attempts (the queue in between does not count)."""
    t = now()
    return sum(((run.ended_at or t) - run.started_at).total_seconds() for run in job.runs)


def finish_attempt(store: Store, server_id: str, job_id: str, attempt: int, result: dict,
                   handover: bool = False) -> None:
    """An attempt of this server's ended with `result` (the worker's, or {"outcome": "died"})."""

    def run(s: Session) -> None:
        job = s.get(Job, job_id)
        if job is None or job.state != "running" or job.attempts != attempt or job.server_id != server_id:
            return  # taken over, deleted or already ended
        after_attempt(job, result, handover)

    store.write(run)


def end_attempt(job: Job, outcome: str, message: str | None) -> None:
    run = job.runs[-1] if job.runs else None
    if run is not None and run.ended_at is None:
        run.ended_at, run.outcome, run.message = now(), outcome, (message or "")[:2000] or None


def retry_or_end(job: Job, what: str) -> None:
    """After an attempt without an outcome: cancelled or timed out if asked, else queued again to resume from its
    checkpoint while attempts remain, else failed."""
    job.server_id = None
    if job.cancel_requested:
        end(job, "cancelled", "cancelled; its training state is kept in the artifact store")
    elif job.timed_out:
        end(job, "failed", f"timed out: it ran longer than its timeout ({(job.timeout_seconds or 0) / 60:g} min)")
    elif job.failed_attempts < job.max_attempts:
        job.state = "queued"
        job.reason = f"{what}; it resumes from its last checkpoint in the artifact store as attempt {job.attempts + 1}"
    else:
        end(job, "failed", f"{what}: its worker was lost in {job.failed_attempts} of {job.max_attempts} allowed "
                           "attempts")


def after_attempt(job: Job, result: dict, handover: bool = False) -> None:
    outcome, problems = result["outcome"], result.get("problems") or []
    message = "; ".join(problems)[:2000] or None
    if outcome in ("busy", "unplaced"):  # it did not run: this attempt does not count
        job.runs.remove(job.runs[-1])
        job.attempts -= 1
        job.state, job.server_id = "queued", None
        job.reason = ("waiting for an earlier attempt's worker to let go of the job's folder" if outcome == "busy"
                      else message or "waiting for a node that can run it")
        return
    if handover and outcome in ("cancelled", "interrupted", "died") and not (job.cancel_requested or job.timed_out):
        end_attempt(job, "handed over", "the server stopped in order and handed the job over")
        retry_or_end(job, f"handed over: the server stopped in order during attempt {job.attempts}")
        return
    if outcome in ("died", "interrupted", "orphaned") or (outcome == "cancelled" and job.timed_out):
        end_attempt(job, "interrupted" if outcome == "cancelled" else outcome, message)
        what = {"died": "the worker died", "orphaned": "the worker lost its server"}.get(outcome,
                                                                                        "the worker was interrupted")
        retry_or_end(job, f"{what} during attempt {job.attempts} ({message})" if message else
                     f"{what} during attempt {job.attempts}")
        return
    end_attempt(job, outcome, message)
    if outcome in ("succeeded", "gate_failed") and result.get("report"):
        job.summary = summary(result["report"])
    job.problems, job.exit_code, job.server_id = problems, result.get("exit_code"), None
    reasons = {
        "succeeded": "every gate passed",
        "gate_failed": "; ".join(problems) or "a gate failed",
        "rejected": "; ".join(problems) or "bad input",
        "cancelled": "cancelled; its training state is kept in the artifact store",
        "failed": "the job crashed: " + ("; ".join(problems) or "see its log"),
    }
    end(job, outcome, reasons[outcome])


def end(job: Job, state: str, reason: str) -> None:
    job.state, job.reason, job.finished_at = state, reason, now()
    if state != "running":
        job.server_id = None


def cancel(store: Store, job_id: str, who: str) -> None:
    """A queued job is cancelled at once; a running one is marked, and its server's dispatcher tells its worker to
    stop (it saves its state and reports `cancelled`)."""

    def run(s: Session) -> None:
        job = s.get(Job, job_id)
        if job is None or job.finished:
            return
        job.cancel_requested = True
        if job.state == "queued":
            end(job, "cancelled", f"cancelled by {who} before it started")
        else:
            job.reason = f"cancelling (asked by {who}): the job saves its training state and stops"

    store.write(run)

