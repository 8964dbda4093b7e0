"""Scanning a Triton-style repository on disk: entries, versions, model files, labels, and every
refusal (hostile names, symlinks out of the repository, files that aren't regular files)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from serve.errors import RepositoryError
from serve.repository import (
    FailedModel,
    ModelEntry,
    ModelSettings,
    ModelVersion,
    RepositoryEntry,
    VersionPolicy,
    name_problem,
    parse_labels,
    scan,
    scan_model,
    version_number,
)
from serve.tensors import TensorSpec

REPO = Path("models")

RESNET = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "input" data_type: TYPE_FP32 dims: [ 3, 8, 8 ] }
output { name: "logits" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" }
version_policy { latest { num_versions: 2 } }
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tests run in tmp_path, so messages name the repository as users see it: models/..."""
    monkeypatch.chdir(tmp_path)
    REPO.mkdir()
    return tmp_path


def model(
    name: str,
    config: str | None = None,
    versions: Mapping[str, str] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """A model folder: config.pbtxt, version folders with a placeholder model file each, files."""
    folder = REPO / name
    folder.mkdir()
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    for version, filename in (versions if versions is not None else {"1": "model.onnx"}).items():
        (folder / version).mkdir()
        if filename:
            (folder / version / filename).write_bytes(b"placeholder")
    for filename, text in (files or {}).items():
        (folder / filename).write_text(text)
    return folder


def failed(entry: RepositoryEntry) -> str:
    assert isinstance(entry, FailedModel), entry
    return entry.reason


def only(name: str) -> ModelEntry:
    entry = scan_model(REPO, name)
    assert isinstance(entry, ModelEntry), entry
    return entry


def reason(name: str) -> str:
    return failed(scan_model(REPO, name))


def test_a_complete_entry(in_tmp: Path) -> None:
    versions = {v: "model.onnx" for v in ("1", "2", "3", "10")}
    model(
        "resnet", RESNET, {**versions, "01": "", "v2": "", "abc": ""}, {"labels.txt": "a\nb\nc\n"}
    )
    real = in_tmp / "models" / "resnet"
    (entry,) = scan(REPO)
    assert entry == ModelEntry(
        name="resnet",
        folder=real,
        backends=("onnxruntime",),
        settings=ModelSettings(
            name="resnet",
            backend="onnxruntime",
            max_batch_size=4,
            inputs=(TensorSpec("input", "FP32", (-1, 3, 8, 8)),),
            outputs=(TensorSpec("logits", "FP32", (-1, 3)),),
            complete_from_model=False,
            version_policy=VersionPolicy("latest", num_versions=2),
            label_files={"logits": "labels.txt"},
        ),
        config_file=real / "config.pbtxt",
        versions={1: real / "1", 2: real / "2", 3: real / "3", 10: real / "10"},
        selected=(
            ModelVersion(10, real / "10", {"onnxruntime": real / "10" / "model.onnx"}),
            ModelVersion(3, real / "3", {"onnxruntime": real / "3" / "model.onnx"}),
        ),
        labels={"logits": ("a", "b", "c")},
        ignored=("01", "abc", "v2"),
    )
    assert list(entry.versions) == [1, 2, 3, 10]


def test_a_bad_model_never_stops_the_others() -> None:
    model("b_bad", "max_batch_size: -1")
    model("a_good")
    model("c_good", versions={"1": "model.pt"})
    (REPO / "README.md").write_text("not a model")
    entries = scan(REPO)
    assert [e.name for e in entries] == ["a_good", "b_bad", "c_good"]
    assert [type(e).__name__ for e in entries] == ["ModelEntry", "FailedModel", "ModelEntry"]
    assert failed(entries[1]) == "models/b_bad/config.pbtxt: max_batch_size: must be >= 0, not -1"
    bad = entries[1]
    assert isinstance(bad, FailedModel) and isinstance(bad.error, RepositoryError)
    assert (bad.error.file, bad.error.field) == ("models/b_bad/config.pbtxt", "max_batch_size")


@pytest.mark.parametrize(
    ("filename", "backend"),
    [("model.onnx", "onnxruntime"), ("model.pt", "torchscript"), ("model.pt2", "torch_export")],
)
def test_without_config_the_model_file_decides(filename: str, backend: str) -> None:
    model("m", None, {"1": filename, "2": filename})
    entry = only("m")
    assert (entry.backends, entry.settings.backend, entry.config_file) == ((backend,), None, None)
    assert (entry.settings.inputs, entry.settings.complete_from_model) == ((), True)
    assert [v.model_files[backend].name for v in entry.selected] == [filename]
    assert [v.number for v in entry.selected] == [2]


def test_a_partial_config_is_completed_later() -> None:
    model("m", 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n')
    settings = only("m").settings
    assert (settings.max_batch_size, settings.inputs, settings.complete_from_model) == (8, (), True)


def test_default_model_filename() -> None:
    model("m", 'default_model_filename: "resnet.pt2"', {"1": "resnet.pt2"})
    entry = only("m")
    assert entry.backends == ("torch_export",)
    assert entry.selected[0].model_files["torch_export"].name == "resnet.pt2"


@pytest.mark.parametrize(
    ("config", "versions", "message"),
    [
        (
            'platform: "pytorch_libtorch"',
            {"1": "model.onnx"},
            "models/m/1/model.pt: does not exist",
        ),
        (
            None,
            {"1": "model.onnx", "2": "weights.bin"},
            "models/m/2: has no model file (model.onnx, model.pt, model.pt2)",
        ),
        (None, {}, "models/m: has no version folder (1, 2, ...)"),
        (
            None,
            {"01": "model.onnx", "v1": "model.onnx"},
            "models/m: has no version folder (1, 2, ...)",
        ),
        (
            "version_policy { all { } }",
            {"1": "model.pt", "2": "model.onnx"},
            "models/m: versions hold different model files (model.onnx in 2, model.pt in 1): "
            "set platform or backend",
        ),
        (
            "version_policy { specific { versions: [ 1, 4, 5 ] } }",
            {"1": "model.onnx", "2": "model.onnx"},
            "models/m/config.pbtxt: version_policy.specific.versions: 4, 5 not found "
            "(versions on disk: 1, 2)",
        ),
    ],
)
def test_model_file_and_version_refusals(
    config: str | None, versions: dict[str, str], message: str
) -> None:
    model("m", config, versions)
    assert reason("m") == message


def test_a_version_may_hold_several_formats() -> None:
    """The server picks one at load time, unless config.pbtxt names it; weights.pt is a format
    only for a model with a factory."""
    folder = model("m", None, {"1": "model.onnx", "2": "model.onnx"})
    for version in ("1", "2"):
        (folder / version / "model.pt").write_bytes(b"placeholder")
        (folder / version / "weights.pt").write_bytes(b"placeholder")
    assert only("m").backends == ("onnxruntime", "torchscript")
    (folder / "config.pbtxt").write_text(
        'parameters { key: "factory" value { string_value: "export.zoo.factories:resnet34" } }'
    )
    entry = only("m")
    assert entry.backends == ("onnxruntime", "torchscript", "eager")
    assert sorted(entry.selected[0].model_files) == ["eager", "onnxruntime", "torchscript"]
    (folder / "config.pbtxt").write_text('backend: "pytorch"')
    entry = only("m")
    assert entry.backends == ("torchscript",)
    assert {b: f.name for b, f in entry.selected[0].model_files.items()} == {
        "torchscript": "model.pt"
    }


def test_version_policies_over_the_files() -> None:
    versions = {v: "model.onnx" for v in ("1", "2", "3", "10", "01", "v2", "abc")}
    model("latest", "version_policy { latest { num_versions: 2 } }", versions)
    model("all", "version_policy { all { } }", versions)
    model("specific", "version_policy { specific { versions: [ 2, 10 ] } }", versions)
    model("default", "", versions)
    chosen = {
        e.name: [v.number for v in e.selected] for e in scan(REPO) if isinstance(e, ModelEntry)
    }
    assert chosen == {"all": [10, 3, 2, 1], "default": [10], "latest": [10, 3], "specific": [10, 2]}
    assert only("all").ignored == ("01", "abc", "v2")


def test_version_folder_names() -> None:
    largest = 2**63 - 1
    assert [version_number(n) for n in ("1", "10", str(largest))] == [1, 10, largest]
    not_versions = [
        "0",
        "01",
        "v2",
        "abc",
        "+3",
        "-1",
        " 1",
        "1 ",
        "1\n",
        "1_0",
        "\u0661",
        "",
        "1e3",
    ]
    not_versions.append("9223372036854775808")
    assert [version_number(n) for n in not_versions] == [None] * len(not_versions)


HOSTILE = [
    ("", "is empty"),
    ("a\0b", "contains a NUL character"),
    ("a\nb", "contains a control character"),
    ("red\x1b[31m", "contains a control character"),
    ("tab\there", "contains a control character"),
    ("c1\x85", "contains a control character"),
    ("a/b", "contains a path separator"),
    ("/etc", "contains a path separator"),
    ("..\\windows", "contains a path separator"),
    ("../escape", "contains a path separator"),
    ("..", "contains '..'"),
    ("a..b", "contains '..'"),
    (".hidden", "starts with a dot"),
    (".", "starts with a dot"),
    ("x" * 256, "is longer than 255 characters"),
    ("with space", "has characters other than ASCII letters, digits, '_', '.' and '-'"),
    ("résumé", "has characters other than ASCII letters, digits, '_', '.' and '-'"),
    ("\uff52esnet", "has characters other than ASCII letters, digits, '_', '.' and '-'"),
    ("bad\udcff", "has characters other than ASCII letters, digits, '_', '.' and '-'"),
    ("C:model", "has characters other than ASCII letters, digits, '_', '.' and '-'"),
    ("-rf", "starts with '-'"),
]


@pytest.mark.parametrize(("name", "problem"), HOSTILE)
def test_hostile_names(name: str, problem: str) -> None:
    assert name_problem(name) == problem


@pytest.mark.parametrize("name", ["resnet", "ResNet-50", "yolo_v8.n", "3d-unet", "_x", "x" * 255])
def test_good_names(name: str) -> None:
    assert name_problem(name) is None


def test_hostile_folders_on_disk_are_refused_one_by_one() -> None:
    names = ["a\nb", "red\x1b[31m", ".hidden", "a..b", "with space", "résumé", "bad\udcff", "-rf"]
    names.append("x" * 255)  # the longest a file system takes, and a good name
    for name in names:
        model(name)
    entries = {e.name: e for e in scan(REPO)}
    # Hidden folders (.git, the exporter's staging folders) are not models: skipped, unreported.
    assert set(entries) == set(names) - {".hidden"}
    assert isinstance(scan_model(REPO, ".hidden"), FailedModel)
    assert isinstance(entries["x" * 255], ModelEntry)
    assert failed(entries["a\nb"]) == "models/'a\\nb': model name contains a control character"
    assert failed(entries["red\x1b[31m"]) == (
        "models/'red\\x1b[31m': model name contains a control character"
    )
    assert failed(scan_model(REPO, ".hidden")) == "models/'.hidden': model name starts with a dot"
    assert failed(entries["a..b"]) == "models/'a..b': model name contains '..'"
    allowed = "has characters other than ASCII letters, digits, '_', '.' and '-'"
    assert failed(entries["with space"]) == f"models/'with space': model name {allowed}"
    assert failed(entries["résumé"]) == f"models/'résumé': model name {allowed}"
    assert failed(entries["bad\udcff"]) == f"models/'bad\\udcff': model name {allowed}"
    assert failed(entries["-rf"]) == "models/'-rf': model name starts with '-'"
    # Every reason is one line, whatever the name holds.
    assert all("\n" not in failed(e) for e in entries.values() if isinstance(e, FailedModel))


def test_names_asked_for_are_checked_before_any_path_is_built() -> None:
    model("ok")
    assert reason("../ok") == "models/'../ok': model name contains a path separator"
    assert reason("/etc") == "models/'/etc': model name contains a path separator"
    assert reason("missing") == "models/missing: does not exist"


def test_symlinks_out_of_the_repository_are_refused(in_tmp: Path) -> None:
    outside = in_tmp / "outside"
    (outside / "7").mkdir(parents=True)
    (outside / "7" / "model.onnx").write_bytes(b"placeholder")
    (outside / "labels.txt").write_text("a\nb\nc\n")
    (outside / "config.pbtxt").write_text("")
    (REPO / "linked").symlink_to(outside)
    model("version_out", None, {"1": "model.onnx"})
    (REPO / "version_out" / "2").symlink_to(outside / "7")
    model("file_out", None, {"1": ""})
    (REPO / "file_out" / "1" / "model.onnx").symlink_to(outside / "7" / "model.onnx")
    model("labels_out", RESNET)
    (REPO / "labels_out" / "labels.txt").symlink_to(outside / "labels.txt")
    model("config_out")
    (REPO / "config_out" / "config.pbtxt").symlink_to("../../outside/config.pbtxt")
    model("root")
    (REPO / "root" / "1" / "model.onnx").unlink()
    (REPO / "root" / "1" / "model.onnx").symlink_to("../../..")
    (REPO / "itself").symlink_to(".")
    root = in_tmp / "models"
    out = f"outside the repository {root}"
    assert {e.name: failed(e) for e in scan(REPO)} == {
        "linked": f"models/linked: resolves to {outside}, {out}",
        "version_out": f"models/version_out/2: resolves to {outside}/7, {out}",
        "file_out": f"models/file_out/1/model.onnx: resolves to {outside}/7/model.onnx, {out}",
        "labels_out": f"models/labels_out/labels.txt: resolves to {outside}/labels.txt, {out}",
        "config_out": f"models/config_out/config.pbtxt: resolves to {outside}/config.pbtxt, {out}",
        "root": f"models/root/1/model.onnx: resolves to {in_tmp}, {out}",
        "itself": f"models/itself: resolves to {root}, {out}",
    }


def test_symlinks_that_stay_inside_are_followed(in_tmp: Path) -> None:
    model("resnet", RESNET, {"1": "model.onnx", "2": "model.onnx"}, {"labels.txt": "a\nb\nc\n"})
    (REPO / "common").mkdir()
    (REPO / "common" / "imagenet.txt").write_text("x\ny\nz\n")
    (REPO / "common" / "pool" / "3").mkdir(parents=True)
    (REPO / "common" / "pool" / "3" / "model.onnx").write_bytes(b"placeholder")
    model("alias", RESNET, {"1": ""})
    (REPO / "alias" / "labels.txt").symlink_to("../common/imagenet.txt")
    (REPO / "alias" / "1" / "model.onnx").symlink_to("../../resnet/1/model.onnx")
    (REPO / "alias" / "3").symlink_to("../common/pool/3")
    (REPO / "resnet_too").symlink_to("resnet")
    (REPO / "notes.txt").symlink_to("common/imagenet.txt")  # a file, not a model
    entries = {e.name: e for e in scan(REPO)}
    assert sorted(entries) == ["alias", "common", "resnet", "resnet_too"]
    root = in_tmp / "models"
    alias = entries["alias"]
    assert isinstance(alias, ModelEntry)
    assert alias.labels == {"logits": ("x", "y", "z")}
    pool = root / "common" / "pool"
    assert alias.versions == {1: root / "alias" / "1", 3: pool / "3"}
    assert alias.selected == (
        ModelVersion(3, pool / "3", {"onnxruntime": pool / "3" / "model.onnx"}),
        ModelVersion(
            1, root / "alias" / "1", {"onnxruntime": root / "resnet" / "1" / "model.onnx"}
        ),
    )
    twin = entries["resnet_too"]
    assert isinstance(twin, ModelEntry) and twin.folder == root / "resnet"
    # A folder without versions is a (failed) model: Triton would say the same.
    assert failed(entries["common"]) == "models/common: has no version folder (1, 2, ...)"


def test_broken_and_looping_symlinks() -> None:
    (REPO / "broken").symlink_to("nowhere")
    (REPO / "loop").symlink_to("loop")
    model("m", RESNET)
    (REPO / "m" / "labels.txt").symlink_to("gone.txt")
    entries = {e.name: failed(e) for e in scan(REPO)}
    assert entries["broken"] == "models/broken: is a broken symlink"
    assert entries["loop"].startswith("models/loop: can't be resolved (")
    assert entries["m"] == "models/m/labels.txt: is a broken symlink"


def test_only_regular_files_are_read() -> None:
    model("config_dir")
    (REPO / "config_dir" / "config.pbtxt").mkdir()
    model("fifo", None, {"1": ""})
    os.mkfifo(REPO / "fifo" / "1" / "model.onnx")
    model("labels_fifo", RESNET)
    os.mkfifo(REPO / "labels_fifo" / "labels.txt")
    assert {e.name: failed(e) for e in scan(REPO)} == {
        "config_dir": "models/config_dir/config.pbtxt: is not a regular file",
        "fifo": "models/fifo/1/model.onnx: is not a regular file",
        "labels_fifo": "models/labels_fifo/labels.txt: is not a regular file",
    }


def test_config_files_that_cant_be_parsed() -> None:
    model("unknown_field", 'name: "unknown_field"\nmax_batch_size: 1\ncolor: 3\n')
    model("gpu", "instance_group [ { kind: KIND_GPU } ]")
    model("renamed", 'name: "other"')
    model("not_utf8")
    (REPO / "not_utf8" / "config.pbtxt").write_bytes(b'name: "caf\xe9"')
    model("huge", "# " + "x" * (1024 * 1024))
    assert {e.name: failed(e) for e in scan(REPO)} == {
        "unknown_field": "models/unknown_field/config.pbtxt:3:1: Message type "
        '"inference.ModelConfig" has no field named "color".',
        "gpu": "models/gpu/config.pbtxt: instance_group[0].kind: KIND_GPU is not supported: "
        "models run on CPU here (KIND_CPU or KIND_AUTO)",
        "renamed": "models/renamed/config.pbtxt: name: 'other' differs from the folder name "
        "'renamed'",
        "not_utf8": "models/not_utf8/config.pbtxt: is not UTF-8 (byte 10)",
        "huge": "models/huge/config.pbtxt: is larger than 1048576 bytes",
    }


def test_labels() -> None:
    assert parse_labels("a\nb\n") == ("a", "b")
    assert parse_labels("a\nb") == ("a", "b")
    assert parse_labels("a\r\nb\r\n") == ("a", "b")
    assert parse_labels("a\n\nc\n") == ("a", "", "c")
    assert parse_labels("a\nb\n\n") == ("a", "b", "")
    assert parse_labels("tabby cat\u2028x\n") == ("tabby cat\u2028x",)
    model("bom", RESNET, files={"labels.txt": "\ufeffchat\nchien\noiseau\n"})
    assert only("bom").labels == {"logits": ("chat", "chien", "oiseau")}


def test_label_count_must_match_a_fixed_last_dim() -> None:
    model("short", RESNET, files={"labels.txt": "a\nb\n"})
    model("blank_line", RESNET, files={"labels.txt": "a\nb\nc\n\n"})
    model("empty", RESNET, files={"labels.txt": ""})
    model("missing", RESNET)
    variable = RESNET.replace("dims: [ 3 ] label", "dims: [ -1 ] label")
    model("variable", variable, files={"labels.txt": "a\nb\nc\nd\ne\n"})
    entries = {e.name: e for e in scan(REPO)}
    assert failed(entries["short"]) == (
        "models/short/labels.txt: 2 labels, but output 'logits' has 3 "
        "(its last dimension in models/short/config.pbtxt)"
    )
    assert failed(entries["blank_line"]) == (
        "models/blank_line/labels.txt: 4 labels, but output 'logits' has 3 "
        "(its last dimension in models/blank_line/config.pbtxt)"
    )
    assert failed(entries["empty"]) == "models/empty/labels.txt: has no labels"
    assert failed(entries["missing"]) == "models/missing/labels.txt: does not exist"
    entry = entries["variable"]
    assert isinstance(entry, ModelEntry) and len(entry.labels["logits"]) == 5


def test_the_repository_itself() -> None:
    with pytest.raises(RepositoryError, match=r"^nowhere: the model repository does not exist$"):
        scan(Path("nowhere"))
    (REPO / "file").write_text("")
    with pytest.raises(
        RepositoryError, match=r"^models/file: the model repository is not a folder$"
    ):
        scan(REPO / "file")
    assert scan(REPO) == []
