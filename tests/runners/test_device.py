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
