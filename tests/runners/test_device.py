"""Finding the CUDA runtime the way pip installs it (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

from qtool.runners import device


def _library(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF not really")
    return path


def test_pip_wheels_come_first_then_cuda_home(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    cu12 = _library(site / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")
    cu13 = _library(site / "nvidia" / "cu13" / "lib" / "libcudart.so.13")
    toolkit = _library(tmp_path / "cuda-12.8" / "lib64" / "libcudart.so.12.8.57")
    _library(site / "nvidia" / "cublas" / "lib" / "libcublas.so.12")  # another library of the same wheels
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda-12.8"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert device.cuda_runtime_candidates([tmp_path / "elsewhere", site]) == [cu13, cu12, toolkit]
    monkeypatch.delenv("CUDA_HOME")
    assert device.cuda_runtime_candidates([tmp_path / "elsewhere"]) == []


def test_a_library_that_does_not_load_is_skipped_and_named_in_the_error(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    _library(site / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")  # not a real library: dlopen fails
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(device.ctypes.util, "find_library", lambda name: None)
    assert device.load_cuda_runtime([site]) is None
    monkeypatch.setattr(device, "load_cuda_runtime", lambda roots=None: None)
    reason = device.missing_gpu_reason()
    assert "nvidia-cuda-runtime-cu12" in reason and "\n" not in reason
    assert device.current_gpu() is None


def test_every_runtime_is_tried_until_one_sees_a_gpu_and_each_one_s_answer_is_named(tmp_path, monkeypatch):
    """A CUDA 13 runtime on a driver too old for it fails with cudaErrorInsufficientDriver; the CUDA 12
    runtime beside it is then used (it used to be skipped: the first library that loaded won)."""
    from tests.helpers.fake_tensorrt import FakeCudart

    site = tmp_path / "site-packages"
    cu12 = _library(site / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12")
    cu13 = _library(site / "nvidia" / "cu13" / "lib" / "libcudart.so.13")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(device.ctypes.util, "find_library", lambda name: None)
    working = FakeCudart()
    libraries = {str(cu13): FakeCudart(fail={"cudaGetDeviceCount": 35}), str(cu12): working}
    monkeypatch.setattr(device.ctypes, "CDLL", lambda path, mode=0: libraries[path])
    found, tried = device.probe_cuda_runtimes(0, [site])
    assert found is working and tried == [
        "libcudart.so.13: CUDA driver version is insufficient for CUDA runtime version (35); the NVIDIA driver is "
        "older than this CUDA runtime needs: update the driver, or use the runtime of an older CUDA "
        "(`pip install 'qtool[trt]'` installs CUDA 12's)"
    ]
    assert device.cuda_versions(working) == {"driver_cuda": "12.4", "runtime_cuda": "12.8"}

    libraries[str(cu12)] = FakeCudart(devices=0)
    monkeypatch.setattr(device, "cuda_runtime_candidates", lambda roots=None: [cu13, cu12])
    reason = device.missing_gpu_reason()
    assert "libcudart.so.13: CUDA driver version is insufficient" in reason and "libcudart.so.12: 0 device(s)" in reason
    assert "\n" not in reason and device.current_gpu() is None
