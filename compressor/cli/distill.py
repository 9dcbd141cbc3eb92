"""`compress distill`: the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compressor.cli.common import DeviceOption, RecipeOption, SetOption, forwarded_argv, overrides


def distill(
    teacher: Annotated[Path, typer.Argument(help=(
        "Teacher: a compressor checkpoint, a state_dict of teacher.arch (registered, torchvision or timm:NAME), "
        "a TorchScript archive, a torch.export .pt2, or a pickled nn.Module with --trust-teacher."
    ))],
    recipe: RecipeOption,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default runs/<recipe name>).")] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    student: Annotated[Optional[str], typer.Option("--student", help="Student architecture, e.g. wrn-16-1.")] = None,
    student_size: Annotated[
        Optional[str], typer.Option("--student-size", help="Student size: a fraction of the teacher (0.25) or a count (200k, 1.5M).")
    ] = None,
    student_latency: Annotated[
        Optional[str], typer.Option("--student-latency", help=(
            "Student latency: its p50 as a fraction of the teacher's (0.33 = 3x faster), measured in onnxruntime "
            "at student.latency_batch; candidates pruned from the teacher are timed and the most accurate that "
            "meets it is distilled."))
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a finished run in --out.")] = False,
    trust_teacher: Annotated[
        bool, typer.Option("--trust-teacher", help="Allow a fully pickled teacher (runs code from the file!).")
    ] = False,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Train on N processes of this machine with DDP, one per GPU (runs "
                          "torchrun; train.batch_size is the global batch). Several machines: see the README.")
    ] = 1,
) -> None:
    """Distil a student from TEACHER with AT+KD, export it to ONNX, verify it with onnxruntime, apply the gates.

    Exit 0: all gates passed; 1: a gate failed (all artifacts still written); 2: bad input; 130: interrupted.
    """
    from compressor.core.errors import UserError
    from compressor.recipe.load import load_recipe

    sets = overrides(set_, device)
    if student and (student_size or student_latency):
        raise UserError("--student and --student-size / --student-latency: give one, not both")
    if student:  # a named network is fresh
        sets += [f"student.arch={student}", "student.size=null", "student.latency=null", "student.latency_ms=null",
                 "student.init=scratch"]
    if student_size:
        sets += [f"student.size={student_size}", "student.arch=null"]
    if student_latency:
        sets += [f"student.latency={student_latency}", "student.arch=null"]
    r = load_recipe(recipe, sets)
    # the job's modules (the exporter, onnxruntime, matplotlib: seconds of imports) only for a recipe that validated
    from compressor.core import distributed
    from compressor.jobs.distill import distill as run_distill

    if nproc > 1 and not distributed.launched():  # checked here, the launch is the children's business
        distributed.per_rank_batch(r.train.batch_size, nproc)
        # the children get the command line as given (a flag added to distill reaches them without a list here);
        # under torchrun they see `launched()` and train instead of launching again
        raise typer.Exit(distributed.launch(nproc, forwarded_argv("distill")))
    run_distill(teacher, r, out or Path("runs") / r.name, resume=resume, force=force, trust_teacher=trust_teacher)
