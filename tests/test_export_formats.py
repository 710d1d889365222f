"""nirgan export: the generator as ONNX, TorchScript and torch.export, each matching eager on the CPU.

Parity is measured here independently of the numbers export.json records: the exported files
are loaded by their own runtimes (onnxruntime, torch.jit, torch.export) and compared with the
eager sampler of the same generator.pt on fresh inputs at batch sizes 1 and 3 (the export
traced batch 2, so this proves the batch is dynamic).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from train_helpers import small_config, write_params

from nirgan.cli import main
from nirgan.models.artifacts import load_sampler, save_generator, untrained_sampler
from nirgan.models.export_formats import FILES, example_inputs, load_exported

TOLERANCE = 1e-4
MODELS = {
    # the default run's generator (params.yaml: multinorm), not label-conditioned
    "default": dict(generator="multinorm"),
    # label-conditioned with the style mapping network L
    "conditioned": dict(generator="encoder_decoder", condition_on_labels=True, style_mapping=True),
}


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """(name, generator.pt, export folder) written by the real CLI."""
    name = request.param
    cfg = small_config(**MODELS[name])
    root = tmp_path_factory.mktemp(f"export_{name}")
    label_dim = 5 if cfg.train.condition_on_labels else 0
    sampler = untrained_sampler(cfg.train, label_dim)
    save_generator(root / "models" / "generator.pt", sampler.generator, cfg.train, label_dim, sampler.mapping)
    params = write_params(root / "params.yaml", cfg)
    # The real CLI in its own process: the exporters (torch.onnx, torch.export) leave global
    # state in the process that ran them, and a later in-process training no longer matched
    # its killed-and-resumed twin bit for bit (test_expression_models' kill -9 test).
    done = subprocess.run([sys.executable, "-m", "nirgan.cli", "--params", str(params), "export", "--model",
                           str(root / "models"), "--out", str(root / "export"), "--format", "onnx,torchscript,pt2"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return name, root / "models" / "generator.pt", root / "export"


@pytest.mark.parametrize("fmt", list(FILES))
def test_exported_generator_matches_eager_at_two_batch_sizes(exported, fmt: str, one_torch_thread):
    name, model, out = exported
    eager = load_sampler(model)
    run = load_exported(fmt, out / FILES[fmt])
    for seed, batch in enumerate((1, 3)):
        args = example_inputs(eager, 64, batch, seed=10 + seed)
        with torch.no_grad():
            want, got = eager(*args), run(*args)
        assert got.shape == (batch, 1, 64, 64)
        diff = float((got - want).abs().max())
        print(f"{name} {fmt} batch {batch}: max abs diff {diff:.2e}")
        assert diff <= TOLERANCE


def test_parity_checks_each_exported_files_shape_against_the_declared_one(exported, one_torch_thread):
    """The export's own parity step: an exported file whose output is not the shape export.json
    declares is an error, not a small max-abs-diff measured on the wrong shape."""
    from nirgan.config import DataError
    from nirgan.models.export_formats import parity

    _, model, out = exported
    sampler = load_sampler(model)
    assert max(parity(sampler, "torchscript", out / FILES["torchscript"], 64, ["n", 1, 64, 64]).values()) <= TOLERANCE
    with pytest.raises(DataError, match=r"the exported generator\.torchscript\.pt returns \(1, 1, 64, 64\) at batch 1, "
                                        r"not the declared \['n', 1, 96, 96\]"):
        parity(sampler, "torchscript", out / FILES["torchscript"], 64, ["n", 1, 96, 96])


def test_onnx_signature_and_card(exported):
    name, model, out = exported
    conditioned = MODELS[name].get("condition_on_labels", False)
    graph = onnx.load(str(out / FILES["onnx"])).graph
    names = [i.name for i in graph.input]
    assert names == (["source", "z", "labels"] if conditioned else ["source", "z"])
    for tensor in graph.input:
        assert tensor.type.tensor_type.shape.dim[0].dim_param  # symbolic: the batch is dynamic
    card = json.loads((out / "export.json").read_text())
    assert card["input_names"] == names and card["label_conditioned"] == conditioned
    assert set(card["files"]) == set(FILES)
    for fmt in FILES:
        assert max(card["parity_max_abs_diff"][fmt].values()) <= TOLERANCE


def test_z_and_labels_are_real_inputs_of_the_export(exported):
    """z (and labels, when conditioned) drive the exported graph: not folded to the constants
    the export traced with."""
    name, model, out = exported
    session = onnxruntime.InferenceSession(str(out / FILES["onnx"]), providers=["CPUExecutionProvider"])
    args = example_inputs(load_sampler(model), 64, 2)
    inputs = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    base = session.run(None, inputs)[0]
    changed = ["z", "labels"] if "labels" in inputs else ["z"]
    for key in changed:
        other = session.run(None, {**inputs, key: -inputs[key]})[0]
        assert np.abs(other - base).max() > 1e-3, key


def test_export_errors_are_one_line(tmp_path: Path, capsys):
    params = write_params(tmp_path / "params.yaml", small_config())
    assert main(["--params", str(params), "export", "--model", str(tmp_path), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "generator.pt" in err and "no generator file" in err
    assert main(["--params", str(params), "export", "--model", str(tmp_path), "--format", "onnx,tflite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format: tflite is not one of onnx, torchscript, pt2" in err


def _generator(root: Path) -> tuple[Path, Path]:
    """(params.yaml at 64 px, generator.pt of the default architecture, untrained)."""
    cfg = small_config()
    sampler = untrained_sampler(cfg.train, 0)
    save_generator(root / "models" / "generator.pt", sampler.generator, cfg.train, 0, sampler.mapping)
    return write_params(root / "params.yaml", cfg), root / "models" / "generator.pt"


@pytest.mark.parametrize("size", ["100", "-64", "7", "0"])
def test_export_refuses_an_image_size_the_generators_cannot_take(tmp_path: Path, capsys, size: str):
    """The params' rule (augment.image_size, generate.image_size): a multiple of 32 from 64. At 100
    the generator returns 96 px, which an export.json declaring 100 would hide."""
    params, model = _generator(tmp_path)
    out = tmp_path / "export"
    assert main(["--params", str(params), "export", "--model", str(model), "--out", str(out), "--format",
                 "torchscript", "--image-size", size]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nirgan: ") and f"--image-size {size}" in err, err
    assert "multiple of 32" in err and "64" in err, err
    assert not out.exists()


def test_export_checks_the_output_shape_it_declares(tmp_path: Path):
    """export_generator itself (no CLI check in between) at a size the generator cannot keep."""
    from nirgan.config import DataError
    from nirgan.models.export_formats import export_generator

    _, model = _generator(tmp_path)
    with pytest.raises(DataError, match=r"generator\.pt.*\(2, 1, 96, 96\).*\['n', 1, 100, 100\]"):
        export_generator(model, tmp_path / "export", ["torchscript"], 100)
    assert not (tmp_path / "export").exists()
    card = export_generator(model, tmp_path / "export", ["torchscript"], 96)
    assert card["output"]["image"]["shape"] == ["n", 1, 96, 96]
    run = load_exported("torchscript", tmp_path / "export" / FILES["torchscript"])
    with torch.no_grad():
        assert run(*example_inputs(load_sampler(model), 96, 3)).shape == (3, 1, 96, 96)
