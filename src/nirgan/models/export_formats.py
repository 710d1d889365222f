"""The generator for consumers outside Python: ONNX, TorchScript and ``torch.export``.

(``nirgan.training.export`` is something else: it logs a run's model to MLflow.)

Each format holds the :class:`~nirgan.models.artifacts.Sampler` of ``generator.pt`` (G, the
style mapping L when the run has one, the label scaling), in eval mode, on the CPU:

    inputs   source  (n, 3, S, S) float32 in [-1, 1]: the rig render, RGB, as x / 127.5 - 1
             z       (n, latent_dim) float32, standard normal
             labels  (n, 5) float32, degrees in the order of ``nirgan.labels.LABELS``; only
                     when the generator is label-conditioned (``label_dim`` > 0)
    output   image   (n, 1, S, S) float32 in [-1, 1]: the NIR face, (y + 1) * 127.5 in 0..255

The batch n is dynamic; S is fixed at export (``augment.image_size`` of the run, or ``nirgan
export --image-size``: a multiple of 32 from 64, as the generators halve it five times). The
output shape export.json declares is checked against what the model returns: the eager sampler
before any export, and each exported file at the parity batches. At another S (100, say) the
generator returns another size (96), and the export stops with a
:class:`~nirgan.config.DataError` instead of declaring a shape no file produces. Files:

    generator.onnx            ONNX (torch.onnx's dynamo exporter; onnxruntime runs it)
    generator.torchscript.pt  TorchScript (``torch.jit.load``, also from C++ libtorch)
    generator.pt2             ``torch.export`` program (``torch.export.load(p).module()``)
    export.json               the signature above, the source file's sha256, versions, and the
                              parity measured right after export: max |format - eager| on
                              random inputs at batch 1 and 3 (or why it is unavailable)

The directory is replaced atomically, and only when it is one: a new or empty folder, or a
previous export (it has export.json). Anything else at ``out_dir`` (a file of the user's, a
folder of other things) is refused with :class:`~nirgan.config.OutputError` before any work, as
is a place that cannot be written; a generator file that cannot be loaded is a
:class:`~nirgan.config.DataError`.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nirgan.config import DataError, OutputError
from nirgan.io import atomic_dir, file_sha256, write_json
from nirgan.labels import LABELS
from nirgan.models.artifacts import Sampler, load_sampler

FILES: dict[str, str] = {"onnx": "generator.onnx", "torchscript": "generator.torchscript.pt", "pt2": "generator.pt2"}
PARITY_BATCHES = (1, 3)


class _Signature(nn.Module):
    """The sampler with exactly the exported inputs (no optional argument for the exporters)."""

    def __init__(self, sampler: Sampler) -> None:
        super().__init__()
        self.sampler = sampler

    def forward(self, source: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.sampler(source, z, labels)


def input_names(sampler: Sampler) -> list[str]:
    return ["source", "z", "labels"] if sampler.label_dim else ["source", "z"]


def example_inputs(sampler: Sampler, image_size: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the exported signature (sources in [-1, 1], labels within +-40 degrees)."""
    g = torch.Generator().manual_seed(seed)
    source = torch.rand(batch, 3, image_size, image_size, generator=g) * 2 - 1
    z = torch.randn(batch, sampler.latent_dim, generator=g)
    labels = (torch.rand(batch, len(LABELS), generator=g) * 2 - 1) * 40
    return (source, z, labels) if sampler.label_dim else (source, z)


def _onnx(module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], path: Path) -> None:
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        module, args, str(path), input_names=names, output_names=["image"],
        dynamic_shapes=tuple({0: batch} for _ in args), dynamo=True, external_data=False, verbose=False,
    )


def _torchscript(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    # tracing records the ops, not the shapes, of these convolutional networks: the parity
    # check at two batch sizes proves the batch stays dynamic
    with warnings.catch_warnings():  # the input-shape guards trace to constants, as they should
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, args, check_trace=False)
    torch.jit.save(traced, str(path))


def _pt2(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))
    torch.export.save(program, str(path))


def load_exported(fmt: str, path: Path):
    """A callable ``(*inputs as torch tensors) -> torch tensor`` for an exported file."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *args: torch.from_numpy(session.run(None, dict(zip(names, (a.numpy() for a in args))))[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    raise ValueError(f"unknown export format {fmt!r}")


def check_output(declared: Sequence[Any], got: torch.Tensor, batch: int, what: str) -> None:
    """``got`` (the output of ``what`` at ``batch``) has the shape export.json declares, or a
    :class:`DataError`: a parity measured on the wrong shape would pass and say nothing."""
    want = tuple(batch if d == "n" else d for d in declared)
    if tuple(got.shape) != want:
        raise DataError(f"{what} returns {tuple(got.shape)} at batch {batch}, not the declared "
                        f"{list(declared)} (output.image.shape of export.json); nothing was exported")


def parity(sampler: Sampler, fmt: str, path: Path, image_size: int,
           declared: Sequence[Any] | None = None) -> dict[str, float]:
    """max |exported - eager| per batch size of :data:`PARITY_BATCHES`, on fresh random inputs;
    with ``declared``, each exported output's shape is checked against it first."""
    run = load_exported(fmt, path)
    out = {}
    for i, batch in enumerate(PARITY_BATCHES):
        args = example_inputs(sampler, image_size, batch, seed=100 + i)
        with torch.no_grad():
            got, want = run(*args).float(), sampler(*args)
        if declared is not None:
            check_output(declared, got, batch, f"the exported {path.name}")
        out[f"batch_{batch}"] = float((got - want).abs().max())
    return out


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FILES))
    if unknown or not formats:
        raise ValueError(f"--format: {', '.join(unknown) or 'nothing'} is not one of {', '.join(FILES)}")
    missing = [m for m in ("onnx", "onnxscript") if "onnx" in formats and importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--format onnx: needs {' and '.join(missing)} (pip install -e '.[export]')")
    return list(dict.fromkeys(formats))


def _claim(out_dir: Path) -> None:
    """``out_dir`` is ours to replace (module docstring) and its parent can be written."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise OutputError(f"{out_dir}: exists and is not a folder; --out names the export folder, which is "
                          "replaced whole, so choose a new one (the file is left as it is)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "export.json").is_file():
        raise OutputError(f"{out_dir}: exists and is not a nirgan export (no export.json); choose an empty or "
                          "new --out (its contents are left as they are)")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(out_dir, exc) from None
    if not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: cannot write the export: permission denied on {out_dir.parent}")


def _output_error(out_dir: Path, exc: OSError) -> OutputError:
    return OutputError(f"{out_dir}: cannot write the export: {exc.strerror or exc} ({exc.filename or out_dir})")


def export_generator(model_path: Path, out_dir: Path, formats: Sequence[str], image_size: int) -> dict[str, Any]:
    """Write ``formats`` of generator.pt's sampler into ``out_dir`` (see the module docstring)."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    _claim(out_dir)  # before the minutes of exporting
    sampler = load_sampler(model_path).cpu().eval()
    module = _Signature(sampler).eval()
    names = input_names(sampler)
    args = example_inputs(sampler, image_size, batch=2)
    card: dict[str, Any] = {
        "source_model": str(model_path), "source_sha256": file_sha256(model_path),
        "inputs": {
            "source": {"shape": ["n", 3, image_size, image_size], "dtype": "float32", "range": [-1, 1]},
            "z": {"shape": ["n", sampler.latent_dim], "dtype": "float32", "distribution": "standard normal"},
            **({"labels": {"shape": ["n", len(LABELS)], "dtype": "float32", "unit": "degrees",
                           "order": list(LABELS)}} if sampler.label_dim else {}),
        },
        "output": {"image": {"shape": ["n", 1, image_size, image_size], "dtype": "float32", "range": [-1, 1]}},
        "input_names": names, "label_conditioned": bool(sampler.label_dim), "image_size": image_size,
        "files": {}, "parity_max_abs_diff": {},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    with torch.no_grad():  # before the minutes of exporting
        check_output(card["output"]["image"]["shape"], module(*args), len(args[0]),
                     f"{model_path} at {image_size} px sources")
    try:
        _write(sampler, module, names, args, card, out_dir, formats, image_size)
    except OSError as exc:
        raise _output_error(out_dir, exc) from None
    return card


def _write(sampler: Sampler, module: nn.Module, names: list[str], args: tuple[torch.Tensor, ...],
           card: dict[str, Any], out_dir: Path, formats: Sequence[str], image_size: int) -> None:
    with atomic_dir(out_dir) as tmp, torch.no_grad():
        for fmt in formats:
            path = tmp / FILES[fmt]
            if fmt == "onnx":
                _onnx(module, args, names, path)
            elif fmt == "torchscript":
                _torchscript(module, args, path)
            else:
                _pt2(module, args, path)
            card["files"][fmt] = FILES[fmt]
            try:
                card["parity_max_abs_diff"][fmt] = parity(sampler, fmt, path, image_size,
                                                          card["output"]["image"]["shape"])
            except ImportError as exc:
                card["parity_max_abs_diff"][fmt] = f"unavailable: {exc}"
        write_json(tmp / "export.json", card)
