"""Every bad input gets one clear line per problem, exit 2, no traceback, and no existing file is touched.

The catalogue runs through the real CLI (in-process for speed; a few through the console script in a
subprocess), on real files: Fashion-MNIST subsets, an ImageFolder of real PNGs, real checkpoints.
"""

import hashlib
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compressor.core.fileio import atomic_path, write_text

from .conftest import RECIPE, ROOT, run_cli, sets

FAST = sets("data.limit_train=64", "train.batch_size=32", "student.arch=wrn-10-1", "device=cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Real Fashion-MNIST test images as grey-scale PNGs: class name -> list of files (3 classes, 6 each)."""
    from torchvision.datasets import FashionMNIST

    ds = FashionMNIST(str(ROOT / "data"), train=False, download=False)
    root = tmp_path_factory.mktemp("pngs")
    for label, name in ((0, "tshirt"), (1, "trouser"), (8, "bag")):
        (root / name).mkdir()
        for i, idx in enumerate((ds.targets == label).nonzero().flatten()[:6].tolist()):
            ds[idx][0].save(root / name / f"{i}.png")
    return root


def image_folder(where: Path, images: Path, train: list[str], test: list[str], *, empty: bool = False) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png from the PNGs above (or empty class folders)."""
    for split, classes in (("train", train), ("test", test)):
        for c in classes:
            (where / split / c).mkdir(parents=True)
            if not empty:
                for f in sorted((images / c).glob("*.png"))[: 4 if split == "train" else 2]:
                    shutil.copy(f, where / split / c / f.name)
    return where


def snapshot(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for r in roots for p in ([r] if r.is_file() else r.rglob("*"))
            if p.is_file()}


def assert_untouched(before: dict[Path, str]) -> None:
    for path, digest in before.items():
        assert path.is_file(), f"{path} was deleted"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{path} was changed"


def errors(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error: ")]


# ---------------------------------------------------------------------------------------------- the catalogue
# Each case builds its files under `tmp` and returns (command line, a phrase every user should see).


def recipe_file(tmp: Path, text: str) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(text)
    return path


def distill(teacher, *extra, recipe=RECIPE, out=None):
    return ["distill", teacher, "--recipe", recipe, *FAST, *extra, *(["--out", out] if out else [])]


def malformed_yaml(tmp, teacher, images):
    bad = recipe_file(tmp, "name: x\ntrain:\n  epochs: 3\n   lr: 0.1\n")  # line 4 is indented too far
    return distill(teacher, recipe=bad, out=tmp / "o"), f"{bad}:4:"


def empty_recipe(tmp, teacher, images):
    empty = recipe_file(tmp, "")  # 0 bytes: a truncated copy or the wrong file, not "all defaults"
    return distill(teacher, recipe=empty, out=tmp / "o"), f"{empty}: empty recipe file"


def recipe_of_comments_only(tmp, teacher, images):
    blank = recipe_file(tmp, "# name: x\n\n   \n# train: {epochs: 3}\n")  # YAML null, like an empty file
    return ["recipe", "validate", blank], f"{blank}: empty recipe file"


def unknown_teacher_arch(tmp, teacher, images):
    args = distill(teacher, "--set", "teacher.arch=wrn-16-x", out=tmp / "o")
    return args, "teacher.arch: unknown model 'wrn-16-x'"


def unknown_student_arch(tmp, teacher, images):
    return distill(teacher, "--student", "resnet1000", out=tmp / "o"), "student.arch: unknown model 'resnet1000'"


def unknown_timm_arch(tmp, teacher, images):
    pytest.importorskip("timm", reason="timm is an optional extra: pip install 'compressor[timm]'")
    args = ["recipe", "validate", RECIPE, "--set", "teacher.arch=timm:nonexistent"]
    return args, "teacher.arch: unknown timm model 'nonexistent'"


def multistep_without_milestones(tmp, teacher, images):
    args = distill(teacher, "--set", "train.schedule=multistep", out=tmp / "o")  # it would train at a constant lr
    return args, "train.milestones: required for schedule multistep"


def unknown_key(tmp, teacher, images):
    return distill(teacher, "--set", "train.lrr=0.01", out=tmp / "o"), "train.lrr: unknown key; did you mean train.lr?"


def unknown_section(tmp, teacher, images):
    bad = recipe_file(tmp, RECIPE.read_text().replace("distill:", "distil:"))
    return distill(teacher, recipe=bad, out=tmp / "o"), "distil: unknown key; did you mean distill?"


def wrong_type(tmp, teacher, images):
    args = distill(teacher, "--set", "train.batch_size=many", out=tmp / "o")
    return args, "train.batch_size: Input should be a valid integer"


def section_not_a_mapping(tmp, teacher, images):
    bad = recipe_file(tmp, "data: fashion_mnist\n")
    return ["recipe", "validate", bad], "data: Input should be a valid dictionary"


def out_of_range(tmp, teacher, images):
    args = distill(teacher, "--set", "data.val_fraction=1.5", out=tmp / "o")
    return args, "data.val_fraction: Input should be less than 1"


def infinite_value(tmp, teacher, images):
    return distill(teacher, "--set", "train.lr=.inf", out=tmp / "o"), "train.lr: Input should be a finite number"


def bad_set_syntax(tmp, teacher, images):
    return distill(teacher, "--set", "train.lr", out=tmp / "o"), "--set train.lr: expected dotted.key=value"


def recipe_missing(tmp, teacher, images):
    return distill(teacher, recipe=tmp / "nope.yaml", out=tmp / "o"), "nope.yaml: recipe not found"


def data_root_missing(tmp, teacher, images):
    return distill(teacher, "--set", f"data.root={tmp}/none", out=tmp / "o"), f"data.root: {tmp}/none does not exist"


def data_root_is_a_file(tmp, teacher, images):
    (tmp / "data.txt").write_text("not a folder\n")
    return distill(teacher, "--set", f"data.root={tmp}/data.txt", out=tmp / "o"), "is a file, not a folder"


def data_root_without_the_dataset(tmp, teacher, images):
    (tmp / "empty").mkdir()
    return distill(teacher, "--set", f"data.root={tmp}/empty", out=tmp / "o"), "lacks the Fashion-MNIST IDX files"


def data_files_truncated(tmp, teacher, images):
    raw = tmp / "fm" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (ROOT / "data" / "FashionMNIST" / "raw").glob("*-ubyte"):
        (raw / f.name).write_bytes(f.read_bytes()[:1000])  # cut off after a few images
    return distill(teacher, "--set", f"data.root={tmp}/fm", out=tmp / "o"), "holds unreadable Fashion-MNIST files"


def imagefolder(tmp, *extra):
    return ["--set", "data.name=imagefolder", "--set", f"data.root={tmp}/folder", "--set", "data.image_size=28",
            "--set", "data.channels=1", *extra]


def imagefolder_without_images(tmp, teacher, images):
    image_folder(tmp / "folder", images, ["bag", "tshirt"], ["bag", "tshirt"], empty=True)
    return distill(teacher, *imagefolder(tmp), out=tmp / "o"), "holds no images"


def imagefolder_with_an_empty_class(tmp, teacher, images):
    image_folder(tmp / "folder", images, ["bag", "tshirt"], ["bag", "tshirt"])
    (tmp / "folder" / "train" / "trouser").mkdir()  # an empty class folder: a 3-class dataset with one unseen class
    return distill(teacher, *imagefolder(tmp), out=tmp / "o"), f"{tmp}/folder/train/trouser is an empty class folder"


def imagefolder_mismatched_classes(tmp, teacher, images):
    image_folder(tmp / "folder", images, ["bag", "tshirt"], ["bag", "trouser"])
    return distill(teacher, *imagefolder(tmp), out=tmp / "o"), "class folders differ between train/ and test/"


def imagefolder_broken_image(tmp, teacher, images):
    image_folder(tmp / "folder", images, ["bag", "tshirt"], ["bag", "tshirt"])
    (tmp / "folder" / "train" / "bag" / "x.png").write_text("not a picture\n")
    return distill(teacher, *imagefolder(tmp), out=tmp / "o"), "x.png: not a readable image"


def teacher_missing(tmp, teacher, images):
    return distill(tmp / "teacher.pt", out=tmp / "o"), "teacher.pt: file not found"


def teacher_truncated(tmp, teacher, images):
    data = teacher.read_bytes()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
    return distill(tmp / "cut.pt", out=tmp / "o"), "cut.pt: not a readable PyTorch checkpoint (truncated"


def teacher_not_a_checkpoint(tmp, teacher, images):
    (tmp / "notes.pt").write_text("these are my notes, not a model\n")
    return distill(tmp / "notes.pt", out=tmp / "o"), "notes.pt: not a"


def teacher_holds_a_tensor(tmp, teacher, images):
    torch.save(torch.zeros(3), tmp / "tensor.pt")
    return distill(tmp / "tensor.pt", out=tmp / "o"), "tensor.pt: neither a compressor checkpoint nor a state_dict"


def teacher_of_another_arch(tmp, teacher, images):
    args = distill(teacher, "--set", "teacher.arch=wrn-16-2", out=tmp / "o")  # the checkpoint holds a wrn-10-1
    return args, "teacher.arch is wrn-16-2, but this compressor checkpoint holds a wrn-10-1"


def export_arch_of_another_checkpoint(tmp, teacher, images):
    args = ["export", teacher, "--arch", "resnet18", "--out", tmp / "m.onnx"]
    return args, "--arch is resnet18, but this compressor checkpoint holds a wrn-10-1"


def teacher_with_other_classes(tmp, teacher, images):
    image_folder(tmp / "folder", images, ["bag", "trouser", "tshirt"], ["bag", "trouser", "tshirt"])
    return distill(teacher, *imagefolder(tmp), out=tmp / "o"), "the teacher has 10 classes, the data has 3"


def teacher_with_other_channels(tmp, teacher, images):
    image_folder(tmp / "folder", images, ["bag", "trouser", "tshirt"], ["bag", "trouser", "tshirt"])
    args = imagefolder(tmp, "--set", "data.channels=3")
    return distill(teacher, *args, out=tmp / "o"), "the teacher takes 1 input channels, the data has 3"


def pairs_that_match_nothing(tmp, teacher, images):
    pairs = "distill.at.pairs=[{teacher: group9, student: group0}]"
    return distill(teacher, "--set", pairs, out=tmp / "o"), "distill.at.pairs: teacher point 'group9' matches no"


def out_under_a_file(tmp, teacher, images):
    (tmp / "file").write_text("a regular file\n")
    return distill(teacher, out=tmp / "file" / "run"), f"--out: cannot create {tmp}/file/run"


def out_in_sysfs(tmp, teacher, images):
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys")
    return distill(teacher, out="/sys/compressor-test-run"), "--out: cannot create /sys/compressor-test-run"


def out_is_a_file(tmp, teacher, images):
    (tmp / "run").write_text("precious\n")
    return distill(teacher, out=tmp / "run"), "exists and is not a directory"


def recorded_run(folder: Path, files: dict[str, bytes]) -> Path:
    """A folder whose files a compressor run wrote, as its run record says."""
    from compressor.core.runrecord import RECORD_NAME, RunRecord

    folder.mkdir()
    record = RunRecord.start(folder / RECORD_NAME, folder)
    for name, content in files.items():
        (folder / name).write_bytes(content)
        record.record(folder / name)
    return folder


def out_holds_a_finished_run(tmp, teacher, images):
    run = recorded_run(tmp / "run", {"report.json": b'{"passed": true}\n', "student.onnx": b"the shipped model"})
    return distill(teacher, out=run), "holds a finished run (report.json); pass --force"


def out_holds_an_unfinished_run(tmp, teacher, images):
    run = recorded_run(tmp / "run", {"train_state.pt": b"state"})
    return distill(teacher, out=run), "holds an unfinished run; pass --resume to continue it or --force"


def out_holds_the_users_own_student(tmp, teacher, images):
    (tmp / "run").mkdir()
    (tmp / "run" / "student.pt").write_bytes(b"my own student")
    return distill(teacher, out=tmp / "run"), f"{tmp / 'run' / 'student.pt'} was not written by a compressor run"


def out_holds_the_teacher_as_a_run_file(tmp, teacher, images):
    (tmp / "run").mkdir()
    inside = tmp / "run" / "teacher.onnx"
    inside.write_bytes(teacher.read_bytes())
    return distill(inside, "--force", out=tmp / "run"), f"{inside} is the teacher this run reads"


def out_holds_the_teacher(tmp, teacher, images):
    (tmp / "run").mkdir()
    inside = tmp / "run" / "t.pt"
    inside.write_bytes(teacher.read_bytes())
    return distill(inside, out=tmp / "run"), f"holds the teacher {inside} this run reads"


def out_is_the_filesystem_root(tmp, teacher, images):
    return distill(teacher, out=Path("/")), "--out: / is the filesystem root"


def train_out_is_its_recipe(tmp, teacher, images):
    recipe = tmp / "r.yaml"
    recipe.write_text(RECIPE.read_text())
    return ["train", "--recipe", recipe, "--out", recipe, "--force", *FAST], f"{recipe} is the recipe this run reads"


def out_in_use_by_another_run(tmp, teacher, images):
    """Another run holds --out's lock (here this test process itself; flock locks are per open file)."""
    from compressor.core import runlock

    (tmp / "run").mkdir()
    _HELD.append(runlock.acquire(tmp / "run" / runlock.LOCK_NAME, "--out", tmp / "run"))
    return distill(teacher, out=tmp / "run"), f"{tmp / 'run'} is in use by another run (pid {os.getpid()} on"


def train_out_in_use_by_another_run(tmp, teacher, images):
    from compressor.core import runlock

    _HELD.append(runlock.acquire(tmp / ".teacher.pt.lock", "--out", tmp / "teacher.pt"))
    return ["train", "--recipe", RECIPE, "--out", tmp / "teacher.pt", *FAST], "teacher.pt is in use by another run"


_HELD: list[int] = []  # lock descriptors the cases above hold until the test ends


def _onnx_of(teacher: Path, path: Path) -> Path:
    from compressor.export.onnx import export_onnx
    from compressor.models.checkpoint import load_model

    model, ck = load_model(teacher)
    export_onnx(model, path, input_shape=tuple(ck["input_shape"]))
    return path


def export_out_is_its_input(tmp, teacher, images):
    copy = tmp / "t.pt"
    copy.write_bytes(teacher.read_bytes())
    return ["export", copy, "--out", copy, "--force"], "t.pt is the input"


def export_out_exists(tmp, teacher, images):
    (tmp / "m.onnx").write_bytes(b"someone's model")
    return ["export", teacher, "--out", tmp / "m.onnx"], "m.onnx exists; pass --force to overwrite it"


def verify_out_is_the_model(tmp, teacher, images):
    model = _onnx_of(teacher, tmp / "m.onnx")
    return ["verify", model, "--recipe", RECIPE, "--out", model, *FAST], "m.onnx is the input"


def verify_out_is_the_baseline(tmp, teacher, images):
    model = _onnx_of(teacher, tmp / "m.onnx")
    return (["verify", model, "--recipe", RECIPE, "--baseline", model, "--out", tmp / "m.onnx", "--force", *FAST],
            "m.onnx is the input")


def verify_result_exists(tmp, teacher, images):
    model = _onnx_of(teacher, tmp / "m.onnx")
    (tmp / "m.verify.json").write_text("{}\n")
    return ["verify", model, "--recipe", RECIPE, *FAST], "m.verify.json exists; pass --force"


def verify_model_of_other_image_size(tmp, teacher, images):
    import onnx

    model = _onnx_of(teacher, tmp / "m.onnx")
    proto = onnx.load(model)
    entry = proto.metadata_props.add()  # what a compressor export of a 32x32 model records
    entry.key, entry.value = "compressor.input_shape", "[1, 32, 32]"
    onnx.save(proto, model)
    return ["verify", model, "--recipe", RECIPE, "--out", tmp / "v.json", *FAST], "takes (1, 32, 32) images (its metadata)"


def verify_reference_missing(tmp, teacher, images):
    model = _onnx_of(teacher, tmp / "m.onnx")
    args = ["verify", model, "--recipe", RECIPE, "--reference", tmp / "nope.pt", "--out", tmp / "v.json", *FAST]
    return args, "--reference: " + str(tmp / "nope.pt") + ": no such file"


def train_out_not_writable(tmp, teacher, images):
    (tmp / "file").write_text("a regular file\n")
    args = ["train", "--recipe", RECIPE, "--out", tmp / "file" / "teacher.pt", *FAST]
    return args, "file exists and is not a directory"


def export_out_not_writable(tmp, teacher, images):
    (tmp / "file").write_text("a regular file\n")
    return ["export", teacher, "--out", tmp / "file" / "m.onnx"], "m.onnx: cannot write here"


def export_to_a_full_disk(tmp, teacher, images):
    return ["export", teacher, "--out", "/dev/full"], "/dev/full: no space left on device while saving"


def verify_truncated_onnx(tmp, teacher, images):
    (tmp / "m.onnx").write_bytes(b"\x08\x09\x12\x07pytorch\x1a\x03")  # the first bytes of a real model
    return ["verify", tmp / "m.onnx", "--recipe", RECIPE], "m.onnx: not an ONNX file (it does not parse"


def verify_not_onnx(tmp, teacher, images):
    return ["verify", teacher, "--recipe", RECIPE], "teacher.pt: not an ONNX file"


def cuda_without_onnxruntime_cuda(tmp, teacher, images):
    """Refused before training: verification would need onnxruntime's CUDA provider (and --out is not made)."""
    import onnxruntime

    if not torch.cuda.is_available() or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("needs a GPU and an onnxruntime without the CUDA provider")
    return distill(teacher, "--device", "cuda", out=tmp / "o"), "device: cuda: onnxruntime has no CUDAExecutionProvider"


def cuda_without_a_gpu(tmp, teacher, images):
    """The first thing missing is the GPU itself (not onnxruntime-gpu, which would not help)."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return distill(teacher, "--device", "cuda", out=tmp / "o"), "device: cuda was asked for but no CUDA device"


CATALOGUE = [malformed_yaml, empty_recipe, recipe_of_comments_only, unknown_teacher_arch, unknown_student_arch,
             unknown_timm_arch, multistep_without_milestones, unknown_key, unknown_section, wrong_type,
             section_not_a_mapping, out_of_range, infinite_value, bad_set_syntax, recipe_missing, data_root_missing, data_root_is_a_file,
             data_root_without_the_dataset, data_files_truncated, imagefolder_without_images, imagefolder_with_an_empty_class,
             imagefolder_mismatched_classes, imagefolder_broken_image, teacher_missing, teacher_truncated,
             teacher_not_a_checkpoint, teacher_holds_a_tensor, teacher_of_another_arch,
             export_arch_of_another_checkpoint, teacher_with_other_classes,
             teacher_with_other_channels, pairs_that_match_nothing, out_under_a_file, out_in_sysfs, out_is_a_file,
             out_holds_a_finished_run, out_holds_an_unfinished_run, out_holds_the_users_own_student,
             out_holds_the_teacher_as_a_run_file, out_holds_the_teacher, out_is_the_filesystem_root,
             train_out_is_its_recipe, train_out_not_writable, export_out_not_writable,
             export_to_a_full_disk, verify_truncated_onnx, verify_not_onnx, cuda_without_onnxruntime_cuda, cuda_without_a_gpu,
             out_in_use_by_another_run, train_out_in_use_by_another_run, export_out_is_its_input, export_out_exists,
             verify_out_is_the_model, verify_out_is_the_baseline, verify_result_exists, verify_model_of_other_image_size,
             verify_reference_missing]


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda f: f.__name__)
def test_bad_input_exits_2_with_one_line_per_problem(case, tmp_path, small_teacher, images, cli, monkeypatch):
    monkeypatch.delenv("COMPRESSOR_DEBUG", raising=False)
    args, phrase = case(tmp_path, small_teacher, images)
    before = snapshot(tmp_path, small_teacher)
    try:
        r = cli(*args)
    finally:
        from compressor.core import runlock

        while _HELD:  # the locks a case held for "another run"
            runlock.let_go(_HELD.pop())
    assert r.exit_code == 2, r.output
    lines = errors(r.output)
    assert any(phrase in ln for ln in lines), r.output
    assert "Traceback" not in r.output
    assert_untouched(before)
    assert not list(tmp_path.rglob(".*.tmp")), "a temporary file was left behind"
    if case is cuda_without_onnxruntime_cuda:
        assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- through the real script


def test_no_traceback_unless_compressor_debug(tmp_path, small_teacher):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(small_teacher.read_bytes()[:1000])
    args = ["distill", cut, "--recipe", RECIPE, "--out", tmp_path / "o", *FAST]
    plain = run_cli(*args, env={"COMPRESSOR_DEBUG": "0"})
    assert plain.returncode == 2
    (line,) = errors(plain.stderr)
    assert line.startswith(f"error: {cut}: not a readable PyTorch checkpoint (truncated or another format")
    assert "Traceback" not in plain.stderr + plain.stdout
    debug = run_cli(*args, env={"COMPRESSOR_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert errors(debug.stderr) == errors(plain.stderr)  # the same message, with the traceback before it


def test_every_recipe_problem_is_listed_by_the_script(tmp_path):
    bad = recipe_file(tmp_path, "name: x\ntrian: {epochs: 1}\ntrain: {epochs: 0, lr: fast}\ndata: {val_fraction: 2}\n")
    r = run_cli("recipe", "validate", bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert sorted(errors(r.stderr)) == sorted([
        f"error: {bad}: trian: unknown key; did you mean train?",
        f"error: {bad}: data.val_fraction: Input should be less than 1",
        f"error: {bad}: train.epochs: Input should be greater than 0",
        f"error: {bad}: train.lr: Input should be a valid number, unable to parse string as a number",
    ])


def test_recipe_problems_are_found_before_any_work_by_the_script(tmp_path):
    """An empty file and an architecture that does not exist: `recipe validate` says so, one line each, exit 2."""
    empty = recipe_file(tmp_path, "")
    r = run_cli("recipe", "validate", empty)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert errors(r.stderr) == [f"error: {empty}: empty recipe file (a recipe is a mapping of sections: data, "
                                "teacher, student, ...)"]
    r = run_cli("recipe", "validate", RECIPE, "--set", "teacher.arch=wrn-16-x", "--set", "student.arch=resnet1000")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = errors(r.stderr)
    assert [ln.split(": ")[2] for ln in lines] == ["teacher.arch", "student.arch"], lines
    assert "did you mean resnet101" in lines[1]
    assert all("known: wrn-D-K" in ln and "torchvision" in ln and "timm:NAME" in ln for ln in lines), lines


def test_teacher_arch_is_checked_only_where_it_is_given(tmp_path, small_teacher, cli):
    """The recipe's default teacher.arch (wrn-16-2) does not refuse the wrn-10-1 checkpoint, the same name given
    explicitly passes the check, another one fails it. The runs stop later on purpose, at pairs that match nothing
    (after the teacher is loaded), so nothing trains."""
    pairs = "distill.at.pairs=[{teacher: group9, student: group0}]"
    for given in ([], ["--set", "teacher.arch=wrn-10-1"]):
        r = cli(*distill(small_teacher, "--set", pairs, *given, out=tmp_path / "o"))
        assert r.exit_code == 2, r.output
        (line,) = errors(r.output)
        assert line.startswith("error: distill.at.pairs: teacher point 'group9' matches no"), r.output
    r = cli(*distill(small_teacher, "--set", pairs, "--set", "teacher.arch=wrn-16-1", out=tmp_path / "o"))
    assert r.exit_code == 2 and errors(r.output) == [
        f"error: {small_teacher}: teacher.arch is wrn-16-1, but this compressor checkpoint holds a wrn-10-1; set "
        "teacher.arch to wrn-10-1 or leave it out (the checkpoint names its own architecture)"], r.output


def test_a_pruned_checkpoint_answers_to_its_base_and_to_its_pruned_name(tmp_path, small_teacher, cli):
    """A student grown from the teacher is saved as its base arch plus a channel plan, and reported as
    `<base>-pruned`: --arch may give either; another architecture is refused."""
    from compressor.models import checkpoint as ckpt_io
    from compressor.models import create_model
    from compressor.students.pruning import channel_plan, count_params, grow_student

    model, ck = ckpt_io.load_model(small_teacher)
    student, _ = grow_student(model, count_params(model) // 2, input_shape=(1, 28, 28), num_classes=10,
                              criterion="magnitude")
    plan = channel_plan(student, create_model("wrn-10-1", 10, 1))
    meta = {k: ck[k] for k in ("classes", "mean", "std")}
    ckpt_io.save(ckpt_io.model_checkpoint(student, arch="wrn-10-1", input_shape=(1, 28, 28), pruned=plan, **meta),
                 tmp_path / "student.pt")
    for arch in ("wrn-10-1", "wrn-10-1-pruned"):
        r = cli("inspect", tmp_path / "student.pt", "--arch", arch)
        assert r.exit_code == 0, r.output
    r = cli("inspect", tmp_path / "student.pt", "--arch", "wrn-16-2")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert errors(r.output) == [f"error: {tmp_path}/student.pt: --arch is wrn-16-2, but this compressor checkpoint "
                                "holds a wrn-10-1-pruned; set --arch to wrn-10-1-pruned or leave it out (the "
                                "checkpoint names its own architecture)"], r.output


# ---------------------------------------------------------------------------------------------- untrusted files


def test_a_pickled_teacher_cannot_run_code_without_trust_teacher(tmp_path, cli):
    """A teacher file whose unpickling would create a file: refused, and the file is never created."""
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    r = cli("distill", tmp_path / "evil.pt", "--recipe", RECIPE, "--out", tmp_path / "o", *FAST)
    assert r.exit_code == 2
    assert any("holds pickled Python objects" in ln and "--trust-teacher" in ln for ln in errors(r.output)), r.output
    assert not marker.exists()


def test_only_the_trust_teacher_path_unpickles():
    """No `weights_only=False` anywhere in the package but the one --trust-teacher load (and the docstring
    that says so)."""
    hits = [(p.relative_to(ROOT), line) for p in (ROOT / "compressor").rglob("*.py")
            for line in p.read_text().splitlines() if "weights_only=False" in line]
    assert hits and all(str(p) == "compressor/teachers/formats.py" and "--trust-teacher" in line for p, line in hits), hits
    code = [line for _, line in hits if "torch.load(" in line]
    assert len(code) == 1


# ---------------------------------------------------------------------------------------------- a full disk


def train_args(out: Path) -> list:
    return ["train", "--recipe", RECIPE, "--out", out, "--force",
            *sets("data.limit_train=80", "train.batch_size=32", "teacher.arch=wrn-10-1", "device=cpu")]


def test_no_space_on_a_tiny_file_system(tmp_path, cli):
    """A 300 KB tmpfs: the training state does not fit; the old checkpoint there survives, nothing is left over."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        old = os.urandom(100_000)
        (mnt / "teacher.pt").write_bytes(old)
        r = cli(*train_args(mnt / "teacher.pt"))
        assert r.exit_code == 2, r.output
        assert errors(r.output) == [f"error: {mnt}/teacher.pt.state: no space left on device while saving "
                                    "(the previous file, if any, is unchanged)"]
        assert (mnt / "teacher.pt").read_bytes() == old
        assert not list(mnt.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_file_size_limit_while_saving(tmp_path):
    """ulimit -f (EFBIG, works without privileges): the same clean failure through the atomic write."""
    old = b"the previous teacher"
    (tmp_path / "teacher.pt").write_bytes(old)
    env = {**os.environ, "COMPRESSOR_DATA": str(ROOT / "data"), "COLUMNS": "200"}
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # noqa: E731
    exe = Path(sys.executable).with_name("compress")
    r = subprocess.run([str(exe), *map(str, train_args(tmp_path / "teacher.pt"))], capture_output=True, text=True,
                       env=env, preexec_fn=limit, timeout=600)
    assert r.returncode == 2, r.stderr
    assert errors(r.stderr) == [f"error: {tmp_path}/teacher.pt.state: file too large for this file system or the "
                                "file-size limit (ulimit -f)"]
    assert (tmp_path / "teacher.pt").read_bytes() == old and not list(tmp_path.glob(".*.tmp"))


def test_writing_to_a_device_keeps_the_device(tmp_path):
    """`--out /dev/null` must write into the device, not rename a regular file over it (as root it could)."""
    write_text("/dev/null", "discarded\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(Exception, match="no space left on device"):
        with atomic_path("/dev/full") as tmp, open(tmp, "w") as f:
            f.write("x" * 100_000)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
