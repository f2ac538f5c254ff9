"""Device resolution (issue 12 item 4, issue 16 item 2): one place decides, from the providers and
GPUs really there, and says why; a backend that cannot run fails before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copy_artifacts

from vqdeploy import machine
from vqdeploy.errors import BackendError
from vqdeploy.runtime.backends import registry as available
from vqdeploy.runtime.backends import registry as devices


def _machine(monkeypatch: pytest.MonkeyPatch, gpu: bool, providers: list[str], torch_gpu: bool | None = None) -> None:
    """One module holds every probe of what the machine has."""
    monkeypatch.setattr(machine, "gpu_present", lambda: gpu)
    monkeypatch.setattr(machine, "ort_providers", lambda: providers)
    monkeypatch.setattr(machine, "torch_cuda", lambda: gpu if torch_gpu is None else torch_gpu)


CPU_ORT = ["CPUExecutionProvider"]
GPU_ORT = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_onnxruntime_auto_is_cpu_with_the_plain_wheel_on_a_gpu_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug: a CUDA torch and the plain onnxruntime wheel made `run` fail; now it runs on CPU and says why."""
    _machine(monkeypatch, gpu=True, providers=CPU_ORT)
    device, why = devices.resolve_device("onnxruntime", None)
    assert device == "cpu" and "no CUDAExecutionProvider" in why and "vqdeploy[gpu]" in why
    logged: list[str] = []
    devices.announce("onnxruntime", device, why, logged.append)
    assert logged == ["backend onnxruntime on cpu (no CUDAExecutionProvider: pip install 'vqdeploy[gpu]' for the GPU)"]


@pytest.mark.parametrize("gpu,providers,want",
                         [(True, GPU_ORT, "cuda"), (False, GPU_ORT, "cpu"), (False, CPU_ORT, "cpu")])
def test_onnxruntime_auto(monkeypatch: pytest.MonkeyPatch, gpu: bool, providers: list[str], want: str) -> None:
    _machine(monkeypatch, gpu, providers)
    assert devices.resolve_device("onnxruntime", None) == (want, "")


def test_explicit_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=True, providers=CPU_ORT)
    with pytest.raises(BackendError, match=r"--device cuda: onnxruntime has no CUDA provider here"):
        devices.resolve_device("onnxruntime", "cuda")
    assert devices.resolve_device("onnxruntime", "cpu") == ("cpu", "")
    assert devices.resolve_device("torch", None) == ("cuda", "")
    _machine(monkeypatch, gpu=False, providers=GPU_ORT)
    with pytest.raises(BackendError, match=r"^--device cuda: no CUDA device is available here$"):
        devices.resolve_device("onnxruntime", "cuda")
    assert devices.resolve_device("torch", None) == ("cpu", "")


def test_tensorrt_needs_a_gpu_and_says_so_without_mentioning_an_unpassed_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpu=False, providers=CPU_ORT)
    with pytest.raises(BackendError) as e:
        devices.resolve_device("tensorrt", None)
    assert str(e.value) == "the tensorrt backend needs a CUDA GPU; none is available here"
    with pytest.raises(BackendError, match=r"^--device cuda: the tensorrt backend needs a CUDA GPU"):
        devices.resolve_device("tensorrt", "cuda")
    with pytest.raises(BackendError, match=r"^--device cpu: the tensorrt backend runs on a CUDA GPU only"):
        devices.resolve_device("tensorrt", "cpu")
    _machine(monkeypatch, gpu=True, providers=CPU_ORT)
    assert devices.resolve_device("tensorrt", None) == ("cuda", "")


def test_parse_backends_validates_every_backend_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _machine(monkeypatch, gpu=False, providers=CPU_ORT)
    with pytest.raises(BackendError, match="^the tensorrt backend needs a CUDA GPU; none is available here$"):
        available.parse_backends("onnxruntime,tensorrt", tmp_path, None)
    with pytest.raises(BackendError, match="unknown backend 'onnx'"):
        available.parse_backends("onnx", tmp_path, None)
    assert available.parse_backends("onnxruntime", tmp_path, None) == [("onnxruntime", "cpu")]
    assert available.parse_backends("auto", tmp_path, None) == [("onnxruntime", "cpu")]
    _machine(monkeypatch, gpu=True, providers=GPU_ORT, torch_gpu=False)
    assert available.parse_backends("auto", tmp_path, None) == [("onnxruntime", "cpu"), ("onnxruntime", "cuda")]


def test_cli_choices_are_the_backend_list() -> None:
    from vqdeploy.commands.run import run
    from vqdeploy.commands.serve import serve

    for command in (run, serve):
        choice = next(p for p in command.params if p.name == "backend").type
        assert tuple(choice.choices) == devices.choices() == ("auto", *devices.BACKENDS)


def test_gpu_present_without_a_driver_is_false() -> None:
    assert isinstance(machine.gpu_present(), bool)
    assert machine.gpu_info() is None or len(machine.gpu_info()) == 2


ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"


@pytest.fixture(scope="module")
def demo(demo_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_artifacts(demo_export, tmp_path_factory.mktemp("demo") / "artifacts")


@pytest.mark.parametrize("args", [["run", "--backend", "tensorrt"], ["parity", "--backends", "tensorrt"],
                                  ["bench", "--backends", "onnxruntime,tensorrt", "--no-reference"]])
def test_cli_tensorrt_without_a_gpu_names_the_backend_not_the_flag(demo: Path, args: list[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any work: bench does not run its CPU benchmarks first and then fail."""
    from click.testing import CliRunner

    from vqdeploy.cli import main

    _machine(monkeypatch, gpu=False, providers=CPU_ORT)
    extra = [str(DEMO / "sketches" / "07_house-square-circle_horizon.png")] if args[0] == "run" else []
    res = CliRunner().invoke(main, [*args, *extra, "--artifacts", str(demo)])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == ["error: the tensorrt backend needs a CUDA GPU; none is available here"], res.output
    assert not (demo / "bench.json").exists()


def test_run_prints_the_device_choice_once(demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from vqdeploy.cli import main

    _machine(monkeypatch, gpu=True, providers=CPU_ORT)  # a GPU, but the plain onnxruntime wheel
    sketch = DEMO / "sketches" / "07_house-square-circle_horizon.png"
    res = CliRunner().invoke(main, ["run", str(sketch), "--artifacts", str(demo), "--out", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    assert res.output.count("backend onnxruntime on cpu (no CUDAExecutionProvider") == 1


def test_no_note_on_a_machine_without_a_gpu(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vqdeploy.artifacts import Artifacts

    _machine(monkeypatch, gpu=False, providers=CPU_ORT)
    logged: list[str] = []
    be = devices.open_backend("auto", Artifacts.open(demo), log=logged.append)
    assert (be.name, be.device, logged) == ("onnxruntime", "cpu", [])


def test_cuda_graphs_on_a_cpu_backend_is_one_error_line(demo: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vqdeploy.cli import main

    sketch = str(DEMO / "sketches" / "07_house-square-circle_horizon.png")
    res = CliRunner().invoke(main, ["run", sketch, "--artifacts", str(demo), "--backend", "onnxruntime", "--device",
                                    "cpu", "--cuda-graphs", "--out", str(tmp_path / "s.png")])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code != 0 and lines == ["error: --cuda-graphs needs a CUDA device; onnxruntime runs on the CPU here"]
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("which", ["seg", "llamagen"])
def test_torch_backend_on_another_device_copies_a_shared_model_and_runs_every_stage_there(
        which: str, exported, llamagen_export: Path) -> None:
    """The first GPU run (H200, 2026-12-04) failed in `parity` and `bench`: TorchBackend moved the caller's
    reference model to CUDA in place (every CPU user of it then mixed devices), and the one-hot class buffer of a
    segmentation cond encoder stayed on the CPU. PyTorch's ``meta`` device stands in for the GPU here: a tensor
    left on the CPU raises exactly as it does against CUDA, and shapes still flow through every stage."""
    import torch

    from vqdeploy.artifacts import read_manifest
    from vqdeploy.families import load_reference
    from vqdeploy.models.kv_cache import write_at
    from vqdeploy.runtime.backends.torch_backend import TorchBackend

    manifest = exported("seg")[2] if which == "seg" else read_manifest(llamagen_export)
    shared = load_reference(manifest)
    be = TorchBackend(shared, manifest, "meta")
    assert {p.device.type for p in shared.parameters()} == {"cpu"}  # the caller's model stays where it was
    stages = [be._encoder, be._decoder] + ([be.cond_graph] if be.cond_graph is not None else [])
    assert (which == "seg") == (be.cond_graph is not None)
    for stage in stages:
        assert {t.device.type for t in [*stage.parameters(), *stage.buffers()]} == {"meta"}, type(stage).__name__
    meta = torch.device("meta")
    fs = manifest.model.first_stage
    grid = be._encoder(torch.zeros(2, fs.in_channels, fs.resolution, fs.resolution, device=meta)).shape
    assert tuple(grid) == (2, *fs.latent_grid)
    assert tuple(be._decoder(torch.zeros(grid, dtype=torch.int64, device=meta)).shape) == \
        (2, fs.out_channels, fs.resolution, fs.resolution)
    if be.cond_graph is not None:  # a class-id map through the one-hot encoder
        be.cond_graph(torch.zeros(2, fs.resolution, fs.resolution, dtype=torch.int64, device=meta))
    gpt = be.transformer().gpt
    cache = gpt.new_cache(2, device=meta)
    position = torch.tensor([0, 3], device=meta)  # rows at their own positions
    tokens = torch.zeros(2, 1, dtype=torch.int64, device=meta)
    assert gpt.forward_at(tokens, position, list(cache.layers), write_at(position))[0].shape[:2] == (2, 1)
    owned = load_reference(manifest)
    assert TorchBackend(owned, manifest, "meta", owned=True).model is owned  # handed over: moved, not copied


def test_gpu_backends_run_ieee_fp32(exported) -> None:
    """The second GPU run (H200) found fp32 logits of ONNX Runtime CUDA up to 11x past the fp32 parity bound, and
    one cond-encoder code of torch CUDA moved: both libraries run fp32 matmuls or convolutions in TF32 by default.
    ONNX Runtime's CUDA provider is asked for ``use_tf32=0`` (CUDA graph sessions too), and a torch backend off the
    CPU turns TF32 off (``meta`` stands in for the GPU)."""
    import torch

    from vqdeploy.families import load_reference
    from vqdeploy.runtime.backends.onnxruntime_backend import cuda_provider
    from vqdeploy.runtime.backends.torch_backend import TorchBackend

    assert cuda_provider(1) == ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0"})
    assert cuda_provider(0, cuda_graph=True)[1] == {"device_id": "0", "use_tf32": "0", "enable_cuda_graph": "1"}
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul  # process-wide flags: restored below
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        manifest = exported("seg")[2]
        TorchBackend(load_reference(manifest), manifest, "cpu")
        assert cudnn.allow_tf32 and matmul.allow_tf32  # the CPU: left alone
        TorchBackend(load_reference(manifest), manifest, "meta", owned=True)
        assert not cudnn.allow_tf32 and not matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_cpu_sessions_stop_spinning_when_a_run_returns(demo_export: Path) -> None:
    """ONNX Runtime's CPU workers spin after a run by default and take the two cores from the next graph and the
    server's threads (docs/performance.md "Thread spinning"): every session of a pipeline asks them to stop."""
    from vqdeploy.runtime.backends.onnxruntime_backend import FORCE_SPINNING_STOP
    from vqdeploy.runtime.pipeline import Pipeline

    pipe = Pipeline.from_artifacts(demo_export, "onnxruntime", "cpu")
    sketch = Path(__file__).resolve().parent.parent / "models" / "demo" / "sketches" / "04_circle_horizon.png"
    pipe(str(sketch), num_samples=1, seed=0)
    sessions = pipe.backend._executors
    assert {"cond_encoder", "transformer_valid_length", "decoder"} <= set(sessions)
    for graph, executor in sessions.items():
        assert executor.session.get_session_options().get_session_config_entry(FORCE_SPINNING_STOP) == "1", graph
