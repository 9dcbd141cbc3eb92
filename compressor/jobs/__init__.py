"""jobs/: the commands' work as plain functions the CLI calls after parsing, one module per command (`teacher`
for `compress train`, `distill`, `export`, `verify`, `inspect`, `ablate`), plus the run folder's claim
(`outdir`) and shared helpers (`common`). They raise UserError for bad input and GateFailure (after every file is
written) for a failed gate. May import every stage package.
"""
