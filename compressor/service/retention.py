"""Retention: a finished job's files and row are kept `--retention-days` days after it finished, then removed;
a teacher no job used for as long goes too. Every server's dispatcher sweeps now and then (`retention_every`);
several servers sweeping at once remove each thing once (a row is deleted only if it is still expired, in its
own transaction, and removing files that are gone already is nothing).

Order: a job's files first, then its row (a server that dies in between leaves a row whose files are gone, which
the next sweep deletes); a teacher's row first, under the condition that no job uses it, then its file.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, exists, func, select

from compressor.service.artifacts import Artifacts
from compressor.service.store import FINISHED, Job, Store, Teacher, now

BATCH = 200  # rows looked at per sweep and kind: a long backlog goes over several sweeps


def sweep(store: Store, artifacts: Artifacts, days: float, at: dt.datetime | None = None) -> dict[str, list[str]]:
    """Remove what expired `days` days before `at` (default now): {"jobs": [ids], "teachers": [sha256s]}."""
    cutoff = (at or now()) - dt.timedelta(days=days)
    with store.session() as s:
        expired = list(s.scalars(select(Job.id).where(Job.state.in_(FINISHED), Job.finished_at < cutoff)
                                 .order_by(Job.finished_at).limit(BATCH)))
    removed_jobs = []
    for job_id in expired:
        artifacts.delete_job(job_id)

        def drop(s, job_id=job_id) -> bool:
            job = s.get(Job, job_id)
            if job is None or not job.finished or job.finished_at >= cutoff:
                return False
            s.delete(job)
            return True

        if store.write(drop):
            removed_jobs.append(job_id)

    used = exists().where(Job.teacher_sha256 == Teacher.sha256)
    stale = func.coalesce(Teacher.last_used_at, Teacher.created_at) < cutoff
    with store.session() as s:
        candidates = list(s.scalars(select(Teacher.sha256).where(stale, ~used).limit(BATCH)))
    removed_teachers = []
    for sha in candidates:
        gone = store.write(lambda s, sha=sha: s.execute(
            delete(Teacher).where(Teacher.sha256 == sha, stale, ~used)).rowcount)
        if gone:
            artifacts.remove_teacher(sha)
            removed_teachers.append(sha)
    return {"jobs": removed_jobs, "teachers": removed_teachers}
