"""The machine a figure was measured on: CPU model, the ISA flags that pick kernels, cores, RAM.

:func:`fingerprint` reads ``/proc/cpuinfo`` and ``/proc/meminfo`` (Linux), falling back to
``platform`` and ``os`` elsewhere; no dependency beyond the standard library. ``edgeseg tune``
stores it in ``MODEL.deploy.json`` and ``edgeseg infer --backend auto`` uses the tuned pick only
where :meth:`Fingerprint.matches` this machine: a ranking measured on an AMX Xeon says nothing
about an AVX2 EPYC, and bf16 may not even run there.

:func:`fma_peak` estimates the fp32 peak that ``edgeseg bench``'s "% peak" column divides by:
FMA units x SIMD lanes x 2 FLOP x clock per physical core, or None where the flags cannot tell.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

# The flags that decide which kernels ONNX Runtime, OpenVINO and XNNPACK run, in /proc/cpuinfo
# spelling. avx512_bf16 or any AMX flag is what OpenVINO's bf16 path needs.
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",  # Arm NEON
    "asimddp",  # Arm dot product (int8)
    "sve",
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Fingerprint:
    """What makes one machine's timings comparable with another's."""

    cpu: str  # model name, e.g. "Intel(R) Xeon(R) Processor" or "AMD EPYC 7B13"
    arch: str  # platform.machine(): x86_64, aarch64
    flags: tuple[str, ...]  # those of ISA_FLAGS this CPU has, in ISA_FLAGS order
    cores: int  # logical CPUs this process may use
    ram_gb: float  # total memory, GiB, one decimal

    @property
    def has_bf16(self) -> bool:
        """True where the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
        return any(f in self.flags for f in BF16_FLAGS)

    def matches(self, other: Fingerprint) -> bool:
        """Same CPU model, architecture, ISA flags and core count (RAM may differ: it does not
        change the ranking, only whether the pick fits, which tune's budget already checked)."""
        return (self.cpu, self.arch, self.flags, self.cores) == (other.cpu, other.arch, other.flags, other.cores)

    def differences(self, other: Fingerprint) -> list[str]:
        """What differs from ``other``, as ``field: mine != theirs`` (empty when they match)."""
        keys = ("cpu", "arch", "flags", "cores")
        return [
            f"{k}: {getattr(self, k)} != {getattr(other, k)}" for k in keys if getattr(self, k) != getattr(other, k)
        ]

    def describe(self) -> str:
        """One line for reports: ``Intel(R) Xeon(R) Processor (x86_64, 2 cores, 23.5 GiB; avx2 ...)``."""
        flags = " ".join(self.flags) or "no listed ISA flags"
        return f"{self.cpu} ({self.arch}, {self.cores} cores, {self.ram_gb:g} GiB; {flags})"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "flags": list(self.flags)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        """Inverse of :meth:`to_json`; raises KeyError/TypeError/ValueError on a malformed dict."""
        known = {f.name for f in fields(cls)}
        values = {k: data[k] for k in known}
        return cls(
            cpu=str(values["cpu"]),
            arch=str(values["arch"]),
            flags=tuple(str(f) for f in values["flags"]),
            cores=int(values["cores"]),
            ram_gb=float(values["ram_gb"]),
        )


def fingerprint() -> Fingerprint:
    """This machine's :class:`Fingerprint`."""
    info = _cpuinfo()
    have = set(info.get("flags", info.get("features", "")).split())
    cpu = info.get("model name") or info.get("hardware") or platform.processor() or "unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Fingerprint(
        cpu=" ".join(cpu.split()),
        arch=platform.machine().lower(),
        flags=tuple(f for f in ISA_FLAGS if f in have),
        cores=cores,
        ram_gb=round(_ram_bytes() / 2**30, 1),
    )


@dataclass(frozen=True)
class FmaPeak:
    """The fp32 peak of the cores a run uses: FMA units x SIMD lanes x 2 FLOP x clock."""

    cores: int  # physical cores counted (SMT siblings share their core's FMA units)
    flops_per_cycle: int  # fp32 FLOP per cycle per core
    ghz: float
    clock: str  # where ``ghz`` comes from

    @property
    def gflops(self) -> float:
        return self.cores * self.flops_per_cycle * self.ghz

    def describe(self) -> str:
        """``2 cores x 32 FLOP/cycle x 2.45 GHz (cpu MHz) = 157 GFLOP/s``."""
        return (
            f"{self.cores} core{'s' * (self.cores != 1)} x {self.flops_per_cycle} FLOP/cycle x {self.ghz:.2f} GHz"
            f" ({self.clock}) = {self.gflops:.0f} GFLOP/s"
        )


def fp32_flops_per_cycle(vendor: str, family: int, model: int, flags: set[str]) -> int | None:
    """fp32 FLOP per cycle of one x86 core: FMA units x lanes x 2; None where the flags do not tell.

    Zen 2-4 and Haswell..Alder Lake have two 256-bit FMA units (2 x 8 x 2 = 32); Zen 4's AVX-512
    runs on those 256-bit units. Zen 5 and the Xeons with AVX-512 (Skylake-SP Gold/Platinum,
    Ice Lake-SP, Sapphire Rapids) typically have two 512-bit units (64). Zen 1 (family 23 below
    model 0x30) splits AVX2 into 128-bit halves (16); AVX without FMA adds and multiplies on
    separate 8-lane ports (16). Arm cores differ by design, not by flag: None.
    """
    amd = vendor == "AuthenticAMD"
    if "avx512f" in flags:
        return 32 if amd and family < 26 else 64
    if "avx2" in flags and "fma" in flags:
        if amd and (family < 23 or (family == 23 and model < 0x30)):
            return 16 if family == 23 else None  # Zen 1 / Zen+; the older FMA4 families are not guessed
        return 32
    if "avx" in flags:
        return 16
    return None


def fma_peak(threads: int) -> FmaPeak | None:
    """This machine's fp32 FMA peak at ``threads`` (0 = all cores), or None where it cannot be known
    (not x86, an ISA the flags do not place, no clock to read)."""
    try:
        max_khz: int | None = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
    except (OSError, ValueError):
        max_khz = None  # no cpufreq: a virtual machine, or a kernel without the driver
    return peak_of(_cpuinfo(), fingerprint().cores, threads, max_khz)


def peak_of(info: dict[str, str], logical: int, threads: int, max_khz: int | None) -> FmaPeak | None:
    """:func:`fma_peak` from ``/proc/cpuinfo``'s first processor (``info``, keys lower-case), the
    logical CPUs this process may use, and cpufreq's maximum clock (None: cpuinfo's MHz, which a
    virtual machine reports as its nominal clock)."""
    try:
        family, model = int(info["cpu family"]), int(info["model"])
        smt = max(1, int(info.get("siblings", 1)) // max(1, int(info.get("cpu cores", 1))))
        ghz, clock = (max_khz / 1e6, "cpufreq maximum") if max_khz else (float(info["cpu mhz"]) / 1e3, "cpu MHz")
    except (KeyError, ValueError):
        return None
    per_cycle = fp32_flops_per_cycle(info.get("vendor_id", ""), family, model, set(info.get("flags", "").split()))
    if per_cycle is None or ghz <= 0:
        return None
    cores = min(threads or logical, -(-logical // smt))  # SMT siblings share their core's FMA units
    return FmaPeak(cores, per_cycle, ghz, clock)


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo, keys lower-case ({} if none)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    if found:
                        break  # one processor is enough: flags are the same on every core here
                    continue
                key, _, value = line.partition(":")
                found.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    return found


def _ram_bytes() -> int:
    """Total memory from /proc/meminfo, else sysconf; 0 when neither tells."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0
