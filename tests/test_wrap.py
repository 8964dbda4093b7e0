"""`python -m export --wrap`: model files of users' own made repository entries (export.wrap),
and config.pbtxt as export.triton_config writes it."""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest
import torch
from google.protobuf import text_format
from onnx import TensorProto, helper
from torch import nn

from export.__main__ import main
from export.convert import torchscript_is_wanted
from export.manifest import Preprocessing
from export.triton_config import TensorConfig, TritonConfig, config_text
from export.wrap import (
    WrapError,
    WrapRequest,
    WrapResult,
    check_with_server,
    parse_tensor,
    wrap,
)
from serve.pb.kserve import model_config_pb2

FP32 = model_config_pb2.DataType.TYPE_FP32
LABELS = ("ant", "bee", "cat", "dog", "eel")


@dataclass
class StagedCheck:
    """Stands in for the server's check where a test is about the writing: records what the
    check was shown, which must be the whole entry, staged outside the model folder."""

    calls: list[tuple[Path, str, bool, set[str]]] = field(default_factory=list)
    error: Exception | None = None

    def __call__(self, repository: Path, name: str, *, allow_python_factories: bool) -> str:
        files = {p.relative_to(repository).as_posix() for p in repository.rglob("*") if p.is_file()}
        self.calls.append((repository, name, allow_python_factories, files))
        if self.error is not None:
            raise self.error
        return "checked"


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, len(LABELS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(images), 1), 1)
        logits: torch.Tensor = self.fc(features)
        return logits


def tiny_classifier() -> nn.Module:
    """A factory, as --factory names it: tests.test_wrap:tiny_classifier."""
    torch.manual_seed(0)
    return TinyClassifier().eval()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lin(x) + y.sum(dim=1, keepdim=True), x * 2


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    """Two inputs a, b and two outputs sum, product, all [batch, 4]."""
    return write_onnx(tmp_path / "two.onnx", "batch")


def write_onnx(path: Path, batch: str | int) -> Path:
    def tensor(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, 4])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        "two",
        [tensor("a"), tensor("b")],
        [tensor("sum"), tensor("product")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def torchscript_file(tmp_path: Path) -> Path:
    return save_torchscript(tiny_classifier(), tmp_path / "classifier.pt")


def save_torchscript(module: nn.Module, path: Path) -> Path:
    with torchscript_is_wanted():
        torch.jit.script(module).save(str(path))
    return path


@pytest.fixture
def labels_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    return path


@pytest.fixture
def program_file(tmp_path: Path) -> Path:
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        TwoInputs().eval(),
        (torch.zeros(2, 4), torch.zeros(2, 5)),
        dynamic_shapes={"x": {0: batch}, "y": {0: batch}},
    )
    path = tmp_path / "program.pt2"
    torch.export.save(program, path)
    return path


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return tmp_path / "repository"


def parsed(result: WrapResult | Path) -> model_config_pb2.ModelConfig:
    """The config.pbtxt of a wrapped entry, or of a model folder, as Triton's ModelConfig."""
    folder = result if isinstance(result, Path) else result.folder
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config


def signature(config: model_config_pb2.ModelConfig) -> list[tuple[str, int, list[int], str]]:
    return [
        (t.name, t.data_type, list(t.dims), getattr(t, "label_filename", ""))
        for t in (*config.input, *config.output)
    ]


def parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def files_below(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# --- what each format becomes -----------------------------------------------------------------


def test_onnx_two_input_model(onnx_file: Path, repository: Path) -> None:
    check = StagedCheck()
    result = wrap(WrapRequest(onnx_file, "adder", repository), check)
    assert result.folder == repository / "adder"
    assert result.model_file == repository / "adder" / "1" / "model.onnx"
    assert files_below(repository) == {"adder/config.pbtxt", "adder/1/model.onnx"}
    # Copied, never moved.
    assert result.model_file.read_bytes() == onnx_file.read_bytes()
    config = parsed(result)
    assert (config.name, config.platform, config.max_batch_size) == (
        "adder",
        "onnxruntime_onnx",
        16,
    )
    assert config.HasField("dynamic_batching")
    assert signature(config) == [
        ("a", FP32, [4], ""),
        ("b", FP32, [4], ""),
        ("sum", FP32, [4], ""),
        ("product", FP32, [4], ""),
    ]
    assert parameters(config) == {}
    # Checked while staged: the whole entry, in a repository of its own, before it moved in.
    ((staged, name, allow_python, files),) = check.calls
    assert staged.parent == repository and staged.name.startswith(".wrap-")
    assert (name, allow_python, files) == (
        "adder",
        False,
        {"adder/config.pbtxt", "adder/1/model.onnx"},
    )
    assert sorted(os.listdir(repository)) == ["adder"]


def test_onnx_without_a_batch_axis(tmp_path: Path, repository: Path) -> None:
    fixed = write_onnx(tmp_path / "fixed.onnx", 1)
    config = parsed(wrap(WrapRequest(fixed, "fixed", repository), StagedCheck()))
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in config.input] == [[1, 4], [1, 4]]
    with pytest.raises(WrapError, match=r"a has no batch axis \(dims \[1, 4\]\)"):
        wrap(WrapRequest(fixed, "again", repository, max_batch_size=8), StagedCheck())


def test_onnx_batch_axis_can_be_declined(onnx_file: Path, repository: Path) -> None:
    config = parsed(
        wrap(WrapRequest(onnx_file, "adder", repository, max_batch_size=0), StagedCheck())
    )
    assert config.max_batch_size == 0
    assert [list(t.dims) for t in config.input] == [[-1, 4], [-1, 4]]


def test_torchscript_classifier(
    torchscript_file: Path, labels_file: Path, repository: Path
) -> None:
    request = WrapRequest(
        torchscript_file,
        "tiny",
        repository,
        preprocessing=Preprocessing(32, 32, (127.0,) * 3, (128.0,) * 3),
        labels=labels_file,
        softmax=True,
        inputs=(parse_tensor("input:FP32:3,32,32"),),
    )
    result = wrap(request, StagedCheck())
    assert files_below(result.folder) == {"config.pbtxt", "labels.txt", "1/model.pt"}
    assert (result.folder / "labels.txt").read_text() == "ant\nbee\ncat\ndog\neel\n"
    config = parsed(result)
    assert (config.platform, config.max_batch_size) == ("pytorch_libtorch", 16)
    assert signature(config) == [
        ("input", FP32, [3, 32, 32], ""),
        ("output__0", FP32, [5], "labels.txt"),
    ]
    assert parameters(config) == {
        "image_input": "input",
        "image_resize": "bilinear",
        "image_mean": "127,127,127",
        "image_std": "128,128,128",
        "softmax": "output__0",
    }
    assert Preprocessing.from_parameters(parameters(config), 32, 32) == request.preprocessing


def test_torch_export_program(program_file: Path, repository: Path) -> None:
    config = parsed(wrap(WrapRequest(program_file, "program", repository), StagedCheck()))
    assert (config.platform, config.max_batch_size) == ("torch_export", 16)
    # Inputs named as forward's arguments; outputs as Triton's PyTorch backend names them.
    assert signature(config) == [
        ("x", FP32, [4], ""),
        ("y", FP32, [5], ""),
        ("output__0", FP32, [3], ""),
        ("output__1", FP32, [4], ""),
    ]
    assert (repository / "program" / "1" / "model.pt2").read_bytes() == program_file.read_bytes()


def test_state_dict_with_a_factory(tmp_path: Path, repository: Path) -> None:
    weights = tmp_path / "tiny.pth"
    torch.save(tiny_classifier().state_dict(), weights)
    check = StagedCheck()
    request = WrapRequest(
        weights,
        "eager",
        repository,
        inputs=(parse_tensor("images:FP32:3,16,16"),),
        factory="tests.test_wrap:tiny_classifier",
    )
    result = wrap(request, check)
    assert result.model_file == repository / "eager" / "1" / "weights.pt"
    assert torch.load(result.model_file, weights_only=True).keys() == {
        "conv.weight",
        "conv.bias",
        "fc.weight",
        "fc.bias",
    }
    config = parsed(result)
    assert config.platform == "pytorch_eager"
    assert signature(config) == [("images", FP32, [3, 16, 16], ""), ("output__0", FP32, [5], "")]
    assert parameters(config) == {"factory": "tests.test_wrap:tiny_classifier"}
    assert check.calls[0][2] is True  # the check may run the factory: the user named it


def test_declared_outputs_are_kept(torchscript_file: Path, repository: Path) -> None:
    request = WrapRequest(
        torchscript_file,
        "tiny",
        repository,
        inputs=(parse_tensor("input:FP32:3,-1,-1"),),
        outputs=(parse_tensor("logits:FP32:5"),),
    )
    config = parsed(wrap(request, StagedCheck()))
    assert signature(config) == [("input", FP32, [3, -1, -1], ""), ("logits", FP32, [5], "")]


def test_a_new_version_beside_the_old(onnx_file: Path, tmp_path: Path, repository: Path) -> None:
    wrap(WrapRequest(onnx_file, "adder", repository), StagedCheck())
    config = repository / "adder" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    kept = config.read_text()
    other = write_onnx(tmp_path / "fixed.onnx", 1)
    wrap(WrapRequest(other, "adder", repository, version=2), StagedCheck())
    assert files_below(repository) == {
        "adder/config.pbtxt",
        "adder/1/model.onnx",
        "adder/2/model.onnx",
    }
    # The model's config.pbtxt stays as its owner left it: the new file is checked against it.
    assert config.read_text() == kept


def test_an_existing_version_needs_force(
    onnx_file: Path, program_file: Path, repository: Path
) -> None:
    wrap(WrapRequest(onnx_file, "m", repository), StagedCheck())
    with pytest.raises(WrapError, match=r"m/1 exists: pass --force to replace it"):
        wrap(WrapRequest(program_file, "m", repository), StagedCheck())
    wrap(WrapRequest(program_file, "m", repository, force=True), StagedCheck())
    assert files_below(repository) == {"m/config.pbtxt", "m/1/model.pt2"}
    # The model's only version replaced: its config.pbtxt is the one checked with the new file.
    assert parsed(repository / "m").platform == "torch_export"
    assert sorted(os.listdir(repository)) == ["m"]


def test_a_failed_check_writes_nothing(onnx_file: Path, repository: Path) -> None:
    check = StagedCheck(error=RuntimeError("no kernel for Add\nsecond line"))
    with pytest.raises(WrapError, match=r"^the entry doesn't load and run: no kernel for Add$"):
        wrap(WrapRequest(onnx_file, "adder", repository), check)
    assert os.listdir(repository) == []


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../escape",
        "a/b",
        "/absolute",
        "a\\b",
        ".hidden",
        "-rf",
        "a..b",
        "nul\0byte",
        "new\nline",
        "with space",
        "naïve",
        "x" * 256,
    ],
)
def test_hostile_names_are_refused(name: str, onnx_file: Path, repository: Path) -> None:
    with pytest.raises(WrapError, match=r"^model name .* (is|contains|starts|has) "):
        wrap(WrapRequest(onnx_file, name, repository), StagedCheck())
    assert not repository.exists()


def test_safe_names_pass(onnx_file: Path, repository: Path) -> None:
    for name in ("a", "resnet-50_v1.5", "A.b-c_9", "x" * 255):
        wrap(WrapRequest(onnx_file, name, repository), StagedCheck())
    assert len(os.listdir(repository)) == 4


@pytest.mark.parametrize("kind", ["folder", "fifo", "missing", "device"])
def test_only_a_regular_file_is_wrapped(kind: str, tmp_path: Path, repository: Path) -> None:
    path = {
        "folder": tmp_path / "dir.onnx",
        "fifo": tmp_path / "fifo.onnx",
        "device": Path("/dev/null"),
    }.get(kind, tmp_path / "missing.onnx")
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    match = "No such file" if kind == "missing" else "is not a regular file"
    with pytest.raises(WrapError, match=match):
        wrap(WrapRequest(path, "m", repository), StagedCheck())


@pytest.mark.parametrize(
    ("file_name", "factory", "match"),
    [
        ("model.bin", "", "wrap a .onnx, .pt"),
        ("weights.pth", "", "is a state dict: pass --factory"),
        ("model.onnx", "tests.test_wrap:tiny_classifier", "--factory goes with a state dict"),
        ("weights.pth", "not a factory", "is not package.module:function"),
    ],
)
def test_formats_that_dont_fit(
    file_name: str, factory: str, match: str, tmp_path: Path, repository: Path
) -> None:
    path = tmp_path / file_name
    path.write_bytes(b"\0")
    with pytest.raises(WrapError, match=match):
        wrap(WrapRequest(path, "m", repository, factory=factory), StagedCheck())


def test_a_state_dict_is_not_torchscript(tmp_path: Path, repository: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(tiny_classifier().state_dict(), weights)
    request = WrapRequest(weights, "m", repository, inputs=(parse_tensor("x:FP32:3,8,8"),))
    with pytest.raises(WrapError, match=r"model\.pt doesn't load as torchscript"):
        wrap(request, StagedCheck())
    assert os.listdir(repository) == []


def test_torchscript_needs_its_inputs(torchscript_file: Path, repository: Path) -> None:
    with pytest.raises(WrapError, match="doesn't record its inputs: pass --input"):
        wrap(WrapRequest(torchscript_file, "m", repository), StagedCheck())


def test_an_aoti_package_needs_its_inputs(tmp_path: Path, repository: Path) -> None:
    package = tmp_path / "compiled.pt2"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("compiled/data/aotinductor/model/model.wrapper.so", b"")
    with pytest.raises(WrapError, match=r"compiled\.pt2 doesn't record its inputs"):
        wrap(WrapRequest(package, "m", repository), StagedCheck())


def test_inputs_must_have_names_of_their_own(torchscript_file: Path, repository: Path) -> None:
    twice = (parse_tensor("x:FP32:3,8,8"), parse_tensor("x:FP32:3,8,8"))
    request = WrapRequest(torchscript_file, "m", repository, inputs=twice, outputs=twice)
    with pytest.raises(WrapError, match="two inputs share a name"):
        wrap(request, StagedCheck())


def test_files_that_record_their_signature_take_no_declarations(
    onnx_file: Path, repository: Path
) -> None:
    request = WrapRequest(onnx_file, "m", repository, inputs=(parse_tensor("a:FP32:4"),))
    with pytest.raises(WrapError, match="records its inputs and outputs: drop --input"):
        wrap(request, StagedCheck())


def test_labels_must_match_one_output(
    torchscript_file: Path, tmp_path: Path, repository: Path
) -> None:
    seven = tmp_path / "seven.txt"
    seven.write_text("a\nb\nc\nd\ne\nf\ng\n")
    request = WrapRequest(
        torchscript_file, "m", repository, labels=seven, inputs=(parse_tensor("x:FP32:3,8,8"),)
    )
    with pytest.raises(WrapError, match=r"7 labels, but no output has 7 .*\(output__0 \[5\]\)"):
        wrap(request, StagedCheck())


def test_image_input_must_fit_the_image_size(torchscript_file: Path, repository: Path) -> None:
    request = WrapRequest(
        torchscript_file,
        "m",
        repository,
        preprocessing=Preprocessing(64, 64),
        inputs=(parse_tensor("x:FP32:3,32,32"),),
    )
    with pytest.raises(WrapError, match=r"'x' is FP32 \[3, 32, 32\]: .* need FP32 \[3, 64, 64\]"):
        wrap(request, StagedCheck())


def test_open_image_dims_take_the_image_size(tmp_path: Path, repository: Path) -> None:
    path = save_torchscript(nn.Flatten(), tmp_path / "flatten.pt")
    request = WrapRequest(
        path,
        "m",
        repository,
        preprocessing=Preprocessing(6, 4, layout="NHWC"),
        inputs=(parse_tensor("pixels:FP32:-1,-1,3"),),
        outputs=(parse_tensor("flat:FP32:-1"),),
    )
    config = parsed(wrap(request, StagedCheck()))
    assert signature(config)[0] == ("pixels", FP32, [6, 4, 3], "")
    assert parameters(config)["image_layout"] == "NHWC"


def test_outputs_without_a_batch_axis_are_refused(tmp_path: Path, repository: Path) -> None:
    class Total(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum()

    path = save_torchscript(Total(), tmp_path / "total.pt")
    request = WrapRequest(path, "m", repository, inputs=(parse_tensor("x:FP32:4"),))
    with pytest.raises(WrapError, match=r"output__0 is \[\] for a batch of 2: the first dimension"):
        wrap(request, StagedCheck())
    config = parsed(
        wrap(
            WrapRequest(path, "m", repository, max_batch_size=0, inputs=request.inputs),
            StagedCheck(),
        )
    )
    assert signature(config) == [("x", FP32, [4], ""), ("output__0", FP32, [], "")]


# --- config.pbtxt -----------------------------------------------------------------------------


def test_config_text_round_trips_through_text_format() -> None:
    hostile = "quote \" backslash \\ newline \n tab \t nul \0 bell \a naïve 名前 ' end"
    config = TritonConfig(
        name="m",
        max_batch_size=8,
        inputs=(TensorConfig("in put", "BYTES", ()), TensorConfig("x", "INT64", (-1, 3))),
        outputs=(TensorConfig("y", "FP16", (2,), "labels.txt"),),
        platform="onnxruntime_onnx",
        dynamic_batching=True,
        parameters={"hostile": hostile, "": "empty key", "k": ""},
    )
    message = model_config_pb2.ModelConfig()
    text_format.Parse(config_text(config), message)
    assert (message.name, message.platform, message.max_batch_size) == ("m", "onnxruntime_onnx", 8)
    assert [(t.name, t.data_type, list(t.dims)) for t in message.input] == [
        ("in put", model_config_pb2.DataType.TYPE_STRING, []),
        ("x", model_config_pb2.DataType.TYPE_INT64, [-1, 3]),
    ]
    (output,) = message.output
    assert (output.data_type, output.label_filename) == (
        model_config_pb2.DataType.TYPE_FP16,
        "labels.txt",
    )
    assert parameters(message) == {"hostile": hostile, "": "empty key", "k": ""}
    # And back: what text_format writes of it parses to the same message.
    again = model_config_pb2.ModelConfig()
    text_format.Parse(text_format.MessageToString(message), again)
    assert again == message


def test_config_without_batching_or_parameters() -> None:
    text = config_text(TritonConfig("m", 0, (TensorConfig("a", "FP32", (1, 4)),), ()))
    assert text.splitlines() == [
        'name: "m"',
        "max_batch_size: 0",
        "input [",
        '  { name: "a" data_type: TYPE_FP32 dims: [ 1, 4 ] }',
        "]",
    ]


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (lambda: TensorConfig("x", "FLOAT", (1,)), "datatype 'FLOAT' is not one of"),
        (lambda: TensorConfig("x", "FP32", (0,)), "dims must be >= 1 or -1, not 0"),
        (lambda: TensorConfig("", "FP32", (1,)), "needs a name"),
        (lambda: TritonConfig("m", -1, (), ()), "max_batch_size must be >= 0"),
        (
            lambda: TritonConfig("m", 0, (TensorConfig("a", "FP32", ()),) * 2, ()),
            "two inputs share a name",
        ),
    ],
)
def test_config_is_checked_when_constructed(tensor: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tensor()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input:FP32:3,224,224", TensorConfig("input", "FP32", (3, 224, 224))),
        ("ids:int64:-1", TensorConfig("ids", "INT64", (-1,))),
        ("scalar:FP32:", TensorConfig("scalar", "FP32", ())),
        ("ns:name:BYTES:1", TensorConfig("ns:name", "BYTES", (1,))),
    ],
)
def test_tensor_arguments(text: str, expected: TensorConfig) -> None:
    assert parse_tensor(text) == expected


@pytest.mark.parametrize("text", ["input", "input:FP32", "input:FP32:3,x", "input:REAL:3"])
def test_bad_tensor_arguments(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_tensor(text)


# --- the command ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--wrap", "m.onnx", "--name", "m", "--model", "resnet34"], "--model: not with --wrap"),
        (["--wrap", "m.onnx", "--name", "m", "--weights", "random"], "--weights: not with --wrap"),
        (["--name", "m"], "--name: only with --wrap"),
        (["--labels", "l.txt", "--softmax"], "--labels, --softmax: only with --wrap"),
        (["--wrap", "m.onnx", "--name", "m", "--mean", "1,2,3"], "--mean: only with --image"),
        (["--wrap", "m.onnx"], "--wrap needs --name"),
        (["--wrap", "m.onnx", "--name", "m", "--image", "32"], "'32' is not HxW"),
        (["--wrap", "m.onnx", "--name", "m", "--image", "8x8", "--mean", "1,2"], "not three"),
        (
            ["--wrap", "m.onnx", "--name", "m", "--image", "8x8", "--scale", "0"],
            "--scale: preprocessing scale must be a positive number",
        ),
        (["--wrap", "m.onnx", "--name", "m", "--input", "x:FP32"], "is not NAME:DATATYPE:DIMS"),
        (
            ["--wrap", "m.onnx", "--name", "m", "--image", "8x8", "--resize-shorter", "4"],
            "--resize-shorter: resize_shorter 4 must be at least the crop's larger side, 8",
        ),
    ],
)
def test_command_line_refusals(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_command_reports_a_refused_name(
    onnx_file: Path, repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--wrap", str(onnx_file), "--name", "../up", "--repository", str(repository)]
    assert main(argv) == 1
    assert capsys.readouterr().err == "wrap failed: model name '../up' contains a path separator\n"


def test_a_new_version_is_checked_against_the_models_config(
    onnx_file: Path, tmp_path: Path, repository: Path
) -> None:
    """With the server's own check: a version that fits the model's config is added; one that
    doesn't (no batch axis, where the config has one) is refused and nothing is written."""
    wrap(WrapRequest(onnx_file, "adder", repository), check_with_server)
    second = write_onnx(tmp_path / "second.onnx", "N")
    wrap(WrapRequest(second, "adder", repository, version=2), check_with_server)
    fixed = write_onnx(tmp_path / "fixed.onnx", 1)
    with pytest.raises(WrapError, match="doesn't load and run"):
        wrap(WrapRequest(fixed, "adder", repository, version=3), check_with_server)
    assert sorted(os.listdir(repository / "adder")) == ["1", "2", "config.pbtxt"]


def test_command_wraps_and_checks(
    onnx_file: Path,
    torchscript_file: Path,
    labels_file: Path,
    repository: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--repository", str(repository)]
    assert main(["--wrap", str(onnx_file), "--name", "adder", *common]) == 0
    argv = [
        "--wrap",
        str(torchscript_file),
        "--name",
        "tiny",
        "--image",
        "32x32",
        "--labels",
        str(labels_file),
        "--softmax",
        "--input",
        "input:FP32:3,32,32",
    ]
    assert main([*argv, *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"adder: wrote {repository}/adder/1/model.onnx; checked: ")
    assert lines[1].startswith(f"tiny: wrote {repository}/tiny/1/model.pt; checked: ")
    assert sorted(os.listdir(repository)) == ["adder", "tiny"]


def test_outputs_are_found_on_zeros_of_the_declared_dtype(tmp_path: Path, repository: Path) -> None:
    class Count(nn.Module):
        def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return ids.to(torch.float64), ids == 0

    path = save_torchscript(Count(), tmp_path / "count.pt")
    request = WrapRequest(path, "m", repository, inputs=(parse_tensor("ids:INT32:7"),))
    config = parsed(wrap(request, StagedCheck()))
    datatype = model_config_pb2.DataType
    assert signature(config) == [
        ("ids", datatype.TYPE_INT32, [7], ""),
        ("output__0", datatype.TYPE_FP64, [7], ""),
        ("output__1", datatype.TYPE_BOOL, [7], ""),
    ]
