"""Which integer kernels this CPU computes exactly, as `--int8-kernels auto` decides it, for tests
whose assertions depend on the CPU, and a fixture that runs a test under both of auto's answers.

`HERE` is read once at import, before any test monkeypatches the detection, so it always describes
the real CPU: an assertion that U8S8 kernels are exact runs only where they are, and says why it is
skipped elsewhere; U8U8, and U8S8 with 7-bit weights, are asserted exact everywhere."""

from __future__ import annotations

import platform

import pytest

from qtool.runners import ort as ort_runner

HERE = ort_runner.int8_kernels_for_this_cpu()  # (kernels, reason) of the real CPU
U8S8_EXACT_HERE = HERE[0] == "u8s8"
X86_HERE = platform.machine().lower() in ("x86_64", "amd64")
X86_WITH_VNNI_HERE = U8S8_EXACT_HERE and X86_HERE  # exact U8S8 on x86
CPU = ort_runner.cpu_summary()

needs_exact_u8s8 = pytest.mark.skipif(
    not U8S8_EXACT_HERE,
    reason=f"8-bit weights on U8S8 kernels are not exact on this CPU ({HERE[1]}); "
    "the U8U8 and 7-bit U8S8 cases of the same test run instead",
)


def u8s8_exact_for(kernels: str, weight_bits: int) -> bool:
    """Whether a build with these kernels and weights computes the QDQ graph's integers on this CPU."""
    return kernels == "u8u8" or weight_bits == 7 or U8S8_EXACT_HERE


@pytest.fixture(params=["saturating", "exact"], ids=["u8s8-saturates", "u8s8-exact"])
def cpu_branch(request, monkeypatch) -> str:
    """Runs a test as on an x86 CPU without VNNI (U8S8 saturates) and as on one with VNNI, whatever this
    CPU is: the detection's probe is replaced, the cached answer cleared before and after."""
    monkeypatch.setattr(ort_runner, "u8s8_saturates", lambda: request.param == "saturating")
    ort_runner.int8_kernels_for_this_cpu.cache_clear()
    yield request.param
    ort_runner.int8_kernels_for_this_cpu.cache_clear()
