"""report/: what a run tells its user: the typed reports (`models`: report.json as `DistillReport`, compress
verify's `VerifyReport`, ablation.json's `AblationTable`, with their JSON Schemas), report.md and the terminal
summary (`markdown`) and the figures (`figures`: attention maps, training curves, latency, the latency search).
May import core, data, students (the latency search's typed result), distill (attention maps for the figures) and
verify (its typed results, which the reports compose).
"""
