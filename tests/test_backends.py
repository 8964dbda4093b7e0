"""The backends: the bundled models agree on every format; tiny models of our own on ONNX Runtime,
TorchScript and eager; and the files and configs each refuses, with a readable reason."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.manifest import EXPORTED_VERSION, ONNX_NAME, TORCHSCRIPT_NAME, WEIGHTS_NAME
from export.pipeline import ExportResult, sample_batch
from export.zoo import MODELS, factories, get_spec
from serve.backends import ArtifactError, BackendSpec, load_backend, run_single
from serve.imaging import ImageLimits, load_image
from serve.tensors import VARIABLE, TensorSpec
from tests.conftest import IMAGES, modules_loaded_by
from tests.tiny_models import write_adder

# The formats the export stage writes for each bundled model.
EXPORTED = ("onnxruntime", "torchscript", "eager")
# Each format's file in an exported model's version folder.
_FILE_NAMES = {"onnxruntime": ONNX_NAME, "torchscript": TORCHSCRIPT_NAME, "eager": WEIGHTS_NAME}


def exported_file(folder: Path, backend: str) -> Path:
    return folder / EXPORTED_VERSION / _FILE_NAMES[backend]


def bundled_spec(exported: ExportResult, backend: str) -> BackendSpec:
    model = get_spec(exported.manifest.model)
    optimize = exported.manifest.torchscript_optimized
    return BackendSpec(
        backend,
        exported_file(exported.folder, backend),
        threads=2,
        inputs=(TensorSpec("input", "FP32", (VARIABLE, *model.input_shape)),),
        outputs=(TensorSpec("logits", "FP32", (VARIABLE, len(model.labels))),),
        parameters={
            "factory": f"export.zoo.factories:{model.name}",
            "torchscript_optimize": str(optimize).lower(),
        },
    )


def images_batch(model: str) -> np.ndarray:
    pre = get_spec(model).preprocessing
    images = sorted(IMAGES.glob("*.*g"))
    return np.stack(
        [load_image(p.read_bytes(), i, ImageLimits(), pre) for i, p in enumerate(images)]
    )


@pytest.mark.parametrize("export", ["lite0_export", "resnet34_export"])
def test_three_backends_same_top1_on_the_example_images(
    export: str, request: pytest.FixtureRequest
) -> None:
    exported: ExportResult = request.getfixturevalue(export)
    model = exported.manifest.model
    batch = np.concatenate([images_batch(model), sample_batch(get_spec(model))])
    logits = {
        kind: run_single(load_backend(bundled_spec(exported, kind)), batch) for kind in EXPORTED
    }
    top1 = {kind: out.argmax(axis=1).tolist() for kind, out in logits.items()}
    assert top1["torchscript"] == top1["eager"] == top1["onnxruntime"]
    assert np.abs(logits["onnxruntime"] - logits["eager"]).max() < 1e-3
    if model == "efficientnet_lite0":
        assert top1["eager"][:3] == [285, 285, 967]  # cat.jpg, cat.png, coffee.jpg


def test_the_zoo_has_a_factory_for_every_model() -> None:
    for name in MODELS:
        built = getattr(factories, name)()
        assert isinstance(built, nn.Module) and not built.training


def test_an_unknown_backend_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"^unknown backend 'tensorrt' \(known: onnxruntime, "):
        load_backend(BackendSpec("tensorrt", tmp_path / "model.plan", threads=1))


# ONNX Runtime


def test_onnx_signature_comes_from_the_session(tmp_path: Path) -> None:
    write_adder(tmp_path / "model.onnx", offset=10.0)
    backend = load_backend(BackendSpec("onnxruntime", tmp_path / "model.onnx", threads=1))
    batch = (VARIABLE, 4)
    assert backend.inputs == (TensorSpec("a", "FP32", batch), TensorSpec("b", "FP32", batch))
    assert backend.outputs == (
        TensorSpec("sum", "FP32", batch),
        TensorSpec("product", "FP32", batch),
    )
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    outputs = backend.run({"a": a, "b": a})
    np.testing.assert_array_equal(outputs["sum"], a + a + 10)
    np.testing.assert_array_equal(outputs["product"], a * a)


def test_onnx_config_may_declare_fewer_outputs_and_fix_sizes(tmp_path: Path) -> None:
    write_adder(tmp_path / "model.onnx", offset=0.0)
    spec = BackendSpec(
        "onnxruntime",
        tmp_path / "model.onnx",
        threads=1,
        inputs=(TensorSpec("b", "FP32", (-1, 4)), TensorSpec("a", "FP32", (2, -1))),
        outputs=(TensorSpec("product", "FP32", (-1, -1)),),
    )
    backend = load_backend(spec)
    assert backend.inputs == (TensorSpec("b", "FP32", (-1, 4)), TensorSpec("a", "FP32", (2, 4)))
    assert backend.outputs == (TensorSpec("product", "FP32", (-1, 4)),)
    ones = np.ones((2, 4), np.float32)
    assert list(backend.run({"a": ones, "b": ones})) == ["product"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            (TensorSpec("a", "INT64", (-1, 4)), TensorSpec("b", "FP32", (-1, 4))),
            r"^input 'a': config.pbtxt declares INT64, the model has FP32$",
        ),
        (
            (TensorSpec("a", "FP32", (-1, 5)), TensorSpec("b", "FP32", (-1, 4))),
            r"^input 'a': config.pbtxt declares shape \[-1, 5\], the model has \[-1, 4\]",
        ),
        (
            (TensorSpec("a", "FP32", (-1, 4)), TensorSpec("c", "FP32", (-1, 4))),
            r"^config.pbtxt declares input 'c', which the ONNX model doesn't have \(its inputs",
        ),
        (
            (TensorSpec("a", "FP32", (-1, 4)),),
            r"^config.pbtxt leaves out the ONNX model's input 'b'$",
        ),
    ],
    ids=["datatype", "size", "unknown", "missing"],
)
def test_an_onnx_config_unlike_the_model_is_refused(
    tmp_path: Path, inputs: tuple[TensorSpec, ...], message: str
) -> None:
    write_adder(tmp_path / "model.onnx", offset=0.0)
    with pytest.raises(ArtifactError, match=message):
        load_backend(BackendSpec("onnxruntime", tmp_path / "model.onnx", 1, inputs=inputs))


def test_a_file_that_is_no_onnx_model_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not an ONNX model")
    with pytest.raises(
        ArtifactError, match=r"^model.onnx is not a model ONNX Runtime can load: Protobuf parsing"
    ) as refused:
        load_backend(BackendSpec("onnxruntime", tmp_path / "model.onnx", threads=1))
    assert "\n" not in str(refused.value)


# TorchScript


class Counter(nn.Module):
    """INT64 and FP32 in, INT64 and FP32 out."""

    def forward(self, ids: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids.sum(1), x * ids


COUNTER_INPUTS = (TensorSpec("ids", "INT64", (-1, 3)), TensorSpec("x", "FP32", (-1, 3)))
COUNTER_OUTPUTS = (TensorSpec("total", "INT64", (-1,)), TensorSpec("scaled", "FP32", (-1, 3)))


@pytest.fixture
def counter_file(tmp_path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        traced = torch.jit.trace(Counter(), (torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3)))
        traced.save(str(tmp_path / "model.pt"))
    return tmp_path / "model.pt"


@pytest.mark.parametrize("optimize", ["true", "false"])
def test_torchscript_runs_int64_inputs(counter_file: Path, optimize: str) -> None:
    spec = BackendSpec(
        "torchscript",
        counter_file,
        threads=1,
        inputs=COUNTER_INPUTS,
        outputs=COUNTER_OUTPUTS,
        parameters={"torchscript_optimize": optimize},
    )
    ids = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    x = np.full((2, 3), 0.5, np.float32)
    outputs = load_backend(spec).run({"ids": ids, "x": x})
    np.testing.assert_array_equal(outputs["total"], np.array([6, 15], np.int64))
    np.testing.assert_array_equal(outputs["scaled"], ids * x)


def test_torchscript_needs_declared_tensors(counter_file: Path) -> None:
    with pytest.raises(
        ArtifactError,
        match=r"^config.pbtxt must list the inputs and outputs of a TorchScript model$",
    ):
        load_backend(BackendSpec("torchscript", counter_file, threads=1, inputs=COUNTER_INPUTS))


def test_torchscript_refuses_a_bad_optimize_value(counter_file: Path) -> None:
    spec = BackendSpec(
        "torchscript",
        counter_file,
        1,
        COUNTER_INPUTS,
        COUNTER_OUTPUTS,
        {"torchscript_optimize": "1"},
    )
    with pytest.raises(
        ArtifactError, match=r"torchscript_optimize: must be true or false, not '1'"
    ):
        load_backend(spec)


def test_a_file_that_is_no_torchscript_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not a zip")
    spec = BackendSpec("torchscript", tmp_path / "model.pt", 1, COUNTER_INPUTS, COUNTER_OUTPUTS)
    with pytest.raises(
        ArtifactError,
        match=r"^model.pt is not a TorchScript file: PytorchStreamReader failed reading zip "
        r"archive: not a ZIP archive\.$",
    ):
        load_backend(spec)


def test_an_output_of_another_datatype_than_declared_fails_the_run(counter_file: Path) -> None:
    outputs = (TensorSpec("total", "FP32", (-1,)), COUNTER_OUTPUTS[1])
    backend = load_backend(BackendSpec("torchscript", counter_file, 1, COUNTER_INPUTS, outputs))
    with pytest.raises(RuntimeError, match=r"^output 'total' is int64, the signature says FP32$"):
        backend.run({"ids": np.ones((1, 3), np.int64), "x": np.ones((1, 3), np.float32)})


# Eager: a factory, then weights.pt loaded into its module


@pytest.fixture
def linear_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(nn.Linear(4, 3).state_dict(), tmp_path / "weights.pt")
    return tmp_path / "weights.pt"


def eager_spec(weights: Path, factory: str, allowed: bool = False) -> BackendSpec:
    return BackendSpec(
        "eager",
        weights,
        threads=1,
        inputs=(TensorSpec("x", "FP32", (-1, 4)),),
        outputs=(TensorSpec("y", "FP32", (-1, 3)),),
        parameters={"factory": factory},
        allow_python_factories=allowed,
    )


def test_a_python_factory_runs_with_the_flag(linear_weights: Path) -> None:
    backend = load_backend(eager_spec(linear_weights, "tests.eager_factories:linear", True))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    state = torch.load(linear_weights, weights_only=True)
    expected = x @ state["weight"].numpy().T + state["bias"].numpy()
    np.testing.assert_allclose(backend.run({"x": x})["y"], expected, rtol=1e-6)


def test_a_python_factory_is_refused_without_the_flag(linear_weights: Path) -> None:
    with pytest.raises(
        ArtifactError,
        match=r"^factory tests.eager_factories:linear: running Python factories is off: start the "
        r"server with --allow-python-factories$",
    ):
        load_backend(eager_spec(linear_weights, "tests.eager_factories:linear"))


@pytest.mark.parametrize(
    "factory", ["linear", "tests.eager_factories", "a:b:c", "a..b:c", "1a:b", "a:", ":b", "a:b-c"]
)
def test_a_malformed_factory_is_refused(linear_weights: Path, factory: str) -> None:
    with pytest.raises(ArtifactError, match=r"is not of the form package.module:function$"):
        load_backend(eager_spec(linear_weights, factory, allowed=True))


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("", r"^config.pbtxt: parameters factory: an eager model needs one"),
        (
            "tests.eager_factories:not_a_module",
            r"^factory tests.eager_factories:not_a_module returned str, not a torch.nn.Module$",
        ),
        (
            "tests.no_such_module:build",
            r"^factory tests.no_such_module:build: ModuleNotFoundError: No module named "
            r"'tests.no_such_module'$",
        ),
    ],
    ids=["missing", "not-a-module", "not-importable"],
)
def test_a_factory_that_gives_no_module_is_refused(
    linear_weights: Path, factory: str, message: str
) -> None:
    with pytest.raises(ArtifactError, match=message):
        load_backend(eager_spec(linear_weights, factory, allowed=True))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            {"weight": torch.zeros(3, 4), "scale": torch.ones(1)},
            r"^weights.pt doesn't fit the factory's module: missing bias; unexpected scale$",
        ),
        (
            {"weight": torch.zeros(3, 5), "bias": torch.zeros(3)},
            r"^weights.pt doesn't fit the factory's module: size mismatch for weight: ",
        ),
        (
            [torch.zeros(3, 4), torch.zeros(3)],
            r"^weights.pt holds a list, not a state dict of tensors",
        ),
    ],
    ids=["keys", "shapes", "not-a-dict"],
)
def test_weights_that_dont_fit_are_refused(tmp_path: Path, state: object, message: str) -> None:
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(ArtifactError, match=message):
        load_backend(eager_spec(tmp_path / "weights.pt", "tests.eager_factories:linear", True))


def test_weights_that_are_no_tensors_are_never_unpickled(tmp_path: Path) -> None:
    torch.save({"weight": np.zeros(3)}, tmp_path / "weights.pt")  # a numpy array: a pickle
    with pytest.raises(ArtifactError, match=r"^weights.pt can't be read as weights: Weights only"):
        load_backend(eager_spec(tmp_path / "weights.pt", "tests.eager_factories:linear", True))


def test_serving_onnxruntime_never_imports_pytorch(lite0_export: ExportResult) -> None:
    """The server loads only its backend's dependencies: no PyTorch (a GB of memory) for ONNX."""
    model_file = exported_file(lite0_export.folder, "onnxruntime")
    code = (
        "from pathlib import Path\n"
        "import serve.server\n"
        "from serve.backends import BackendSpec, load_backend\n"
        f"load_backend(BackendSpec('onnxruntime', Path({str(model_file)!r}), threads=1))\n"
    )
    assert modules_loaded_by(code, ["torch", "torchvision", "onnx"]) == []
