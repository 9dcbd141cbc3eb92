"""report/: what a run tells its user: report.md and the terminal summary (`markdown`) and the figures
(`figures`: attention maps, training curves, latency). report.json is the job's dict, written by jobs.distill.
May import core, data and distill (attention maps for the figures).
"""
