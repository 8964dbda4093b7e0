"""The torch_export backend on tiny real programs: the signature it reads from a .pt2, batches of
any size on a dynamic batch axis, what config.pbtxt may declare, and the files it refuses."""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from serve.backends import ArtifactError, BackendSpec, load_backend
from serve.tensors import TensorSpec


class Scorer(nn.Module):
    """Two inputs of two datatypes, two outputs of two datatypes."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.linear = nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = (self.embedding(tokens) * weights.unsqueeze(-1)).sum(1)
        return self.linear(pooled), tokens > 4


def scorer() -> nn.Module:
    torch.manual_seed(0)
    return Scorer().eval()


def scorer_inputs(rows: int) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(rows)
    return {
        "tokens": generator.integers(0, 10, (rows, 3), dtype=np.int64),
        "weights": generator.random((rows, 3), dtype=np.float32),
    }


@pytest.fixture(scope="module")
def dynamic_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scorer exported with a dynamic batch axis (1 to 16 rows)."""
    batch = torch.export.Dim("batch", min=1, max=16)
    example = tuple(torch.from_numpy(a) for a in scorer_inputs(2).values())
    program = torch.export.export(
        scorer(), example, dynamic_shapes={"tokens": {0: batch}, "weights": {0: batch}}
    )
    path = tmp_path_factory.mktemp("dynamic") / "model.pt2"
    torch.export.save(program, path)
    return path


def export_spec(path: Path, **fields: object) -> BackendSpec:
    return BackendSpec("torch_export", path, threads=1, **fields)  # type: ignore[arg-type]


def test_the_signature_comes_from_the_program(dynamic_program: Path) -> None:
    backend = load_backend(export_spec(dynamic_program))
    assert backend.inputs == (
        TensorSpec("tokens", "INT64", (-1, 3)),
        TensorSpec("weights", "FP32", (-1, 3)),
    )
    assert backend.outputs == (
        TensorSpec("output__0", "FP32", (-1, 2)),
        TensorSpec("output__1", "BOOL", (-1, 3)),
    )


@pytest.mark.parametrize("rows", [1, 5])
def test_a_dynamic_batch_runs_any_size_like_eager(dynamic_program: Path, rows: int) -> None:
    backend = load_backend(export_spec(dynamic_program))
    inputs = scorer_inputs(rows)
    outputs = backend.run(inputs)
    with torch.inference_mode():
        scores, flags = scorer()(*(torch.from_numpy(a) for a in inputs.values()))
    np.testing.assert_array_equal(outputs["output__0"], scores.numpy())
    np.testing.assert_array_equal(outputs["output__1"], flags.numpy())
    assert outputs["output__0"].shape == (rows, 2)


def test_the_batch_axis_bound_is_read(dynamic_program: Path, tmp_path: Path) -> None:
    """Dim("batch", max=16) refuses 17 rows at run time: the loader caps batches by it."""
    assert load_backend(export_spec(dynamic_program)).max_rows == 16
    unbounded = torch.export.export(
        nn.Linear(4, 3).eval(), (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("b")},)
    )
    torch.export.save(unbounded, tmp_path / "model.pt2")
    assert load_backend(export_spec(tmp_path / "model.pt2")).max_rows is None


def test_a_config_batch_beyond_the_programs_bound_is_refused(
    dynamic_program: Path, tmp_path: Path
) -> None:
    from serve.config import ServerConfig
    from serve.errors import RepositoryError
    from serve.loading import load_version
    from serve.repository import ModelEntry, scan_model

    folder = tmp_path / "repo" / "scorer"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.pt2").write_bytes(dynamic_program.read_bytes())
    (folder / "config.pbtxt").write_text('platform: "torch_export"\nmax_batch_size: 32\n')
    entry = scan_model(tmp_path / "repo", "scorer")
    assert isinstance(entry, ModelEntry)
    config = ServerConfig(model_repository=tmp_path / "repo")
    with pytest.raises(RepositoryError, match=r"max_batch_size: 32 is more than the model file"):
        load_version(entry, entry.selected[0], config, decode_pool=None)  # type: ignore[arg-type]


def test_a_static_program_keeps_its_fixed_batch(tmp_path: Path) -> None:
    program = torch.export.export(nn.Linear(4, 3).eval(), (torch.zeros(2, 4),))
    torch.export.save(program, tmp_path / "model.pt2")
    backend = load_backend(export_spec(tmp_path / "model.pt2"))
    assert backend.inputs == (TensorSpec("input", "FP32", (2, 4)),)
    assert backend.outputs == (TensorSpec("output__0", "FP32", (2, 3)),)


def test_config_names_the_tensors_by_position(dynamic_program: Path) -> None:
    spec = export_spec(
        dynamic_program,
        inputs=(TensorSpec("ids", "INT64", (-1, 3)), TensorSpec("w", "FP32", (-1, -1))),
        outputs=(TensorSpec("scores", "FP32", (-1, 2)), TensorSpec("flags", "BOOL", (-1, 3))),
    )
    backend = load_backend(spec)
    # An axis the config leaves open but the program fixes keeps the program's size.
    assert backend.inputs[1] == TensorSpec("w", "FP32", (-1, 3))
    tokens, weights = scorer_inputs(2).values()
    outputs = backend.run({"ids": tokens, "w": weights})
    assert sorted(outputs) == ["flags", "scores"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            (TensorSpec("tokens", "FP32", (-1, 3)), TensorSpec("weights", "FP32", (-1, 3))),
            r"^input 'tokens': config.pbtxt declares FP32, the model has INT64$",
        ),
        (
            (TensorSpec("tokens", "INT64", (-1, 3, 1)), TensorSpec("weights", "FP32", (-1, 3))),
            r"^input 'tokens': config.pbtxt declares shape \[-1, 3, 1\], the model has \[-1, 3\]",
        ),
        (
            (TensorSpec("tokens", "INT64", (-1, 4)), TensorSpec("weights", "FP32", (-1, 3))),
            r"^input 'tokens': config.pbtxt declares shape \[-1, 4\], the model has \[-1, 3\]",
        ),
        (
            (TensorSpec("tokens", "INT64", (-1, 3)),),
            r"^config.pbtxt declares 1 input\(s\), the program has 2: tokens, weights$",
        ),
    ],
    ids=["datatype", "rank", "size", "count"],
)
def test_a_config_unlike_the_program_is_refused(
    dynamic_program: Path, inputs: tuple[TensorSpec, ...], message: str
) -> None:
    with pytest.raises(ArtifactError, match=message):
        load_backend(export_spec(dynamic_program, inputs=inputs))


def test_a_file_that_is_no_pt2_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "garbage.pt2").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"^garbage.pt2 is not a readable .pt2 archive"):
        load_backend(export_spec(tmp_path / "garbage.pt2"))
    with zipfile.ZipFile(tmp_path / "other.pt2", "w") as archive:
        archive.writestr("archive/data.txt", "some other zip")
    with pytest.raises(ArtifactError, match=r"^other.pt2 is not a .pt2 archive"):
        load_backend(export_spec(tmp_path / "other.pt2"))


class MakeDirectory:
    """Unpickled, it makes a directory: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.path),)


def with_pickled_weight(program: Path, target: Path, marker: Path) -> None:
    """A copy of ``program`` whose embedding weight is a pickle, as torch.export.save stores a
    weight it can't store raw."""
    with zipfile.ZipFile(program) as source, zipfile.ZipFile(target, "w") as copy:
        (config_entry,) = [n for n in source.namelist() if n.endswith("model_weights_config.json")]
        config = json.loads(source.read(config_entry))
        payload = config["config"]["embedding.weight"]
        payload["use_pickle"] = True
        pickled = io.BytesIO()
        torch.save(MakeDirectory(marker), pickled)
        replaced = {
            config_entry: json.dumps(config).encode(),
            str(Path(config_entry).parent / payload["path_name"]): pickled.getvalue(),
        }
        for item in source.infolist():
            copy.writestr(item, replaced.get(item.filename) or source.read(item))


def test_a_pickle_inside_a_program_is_refused_unrun(dynamic_program: Path, tmp_path: Path) -> None:
    marker = tmp_path / "the-pickle-ran"
    hostile = tmp_path / "model.pt2"
    with_pickled_weight(dynamic_program, hostile, marker)
    with pytest.raises(ArtifactError, match=r"^model.pt2 holds a pickled Python object \(data/"):
        load_backend(export_spec(hostile))
    assert not marker.exists()
    # What the check is for: torch.export.load itself runs it.
    with contextlib.suppress(Exception):
        torch.export.load(hostile)
    assert marker.is_dir()


def test_aoti_package_slow_about_20s_to_compile(tmp_path: Path) -> None:
    """AOTInductor: the package's compile takes about 20 s here, the rest a second. A package with
    a dynamic batch axis runs batches of any size; it is code, so it needs the server's flag, and
    it records no names or datatypes, so config.pbtxt must give them."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(model, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    path = Path(
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "model.pt2"))
    )
    declared = {
        "inputs": (TensorSpec("x", "FP32", (-1, 4)),),
        "outputs": (TensorSpec("y", "FP32", (-1, 3)),),
    }
    with pytest.raises(ArtifactError, match=r"is compiled code: .*--allow-python-factories$"):
        load_backend(export_spec(path, **declared))
    with pytest.raises(ArtifactError, match="must list the inputs and outputs"):
        load_backend(export_spec(path, allow_python_factories=True))
    with pytest.raises(ArtifactError, match=r"declares 2 output\(s\), the AOTInductor .* has 1$"):
        load_backend(
            export_spec(
                path,
                allow_python_factories=True,
                inputs=declared["inputs"],
                outputs=declared["outputs"] * 2,
            )
        )
    backend = load_backend(export_spec(path, allow_python_factories=True, **declared))
    for rows in (1, 5):
        x = np.random.default_rng(rows).random((rows, 4), dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(backend.run({"x": x})["y"], expected, rtol=1e-6, atol=1e-6)
