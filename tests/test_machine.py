"""edgeseg.machine: the fingerprint read from /proc, checked against lscpu and os."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

import pytest

from edgeseg.machine import ISA_FLAGS, Fingerprint, fingerprint


def lscpu() -> dict[str, str]:
    """lscpu's ``Key: value`` lines: util-linux's own reading of the CPU, not ours."""
    if shutil.which("lscpu") is None:
        pytest.skip("lscpu is not installed (util-linux)")
    out = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


def test_fingerprint_agrees_with_lscpu_and_os() -> None:
    here, info = fingerprint(), lscpu()
    assert here.cpu == " ".join(info["Model name"].split())
    assert here.arch == info["Architecture"].lower()
    have = set(info.get("Flags", "").split())
    assert here.flags == tuple(f for f in ISA_FLAGS if f in have)
    assert here.cores == len(os.sched_getaffinity(0))
    total_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert abs(here.ram_gb - total_gib) <= 0.2


def test_json_round_trip_and_matching() -> None:
    here = fingerprint()
    again = Fingerprint.from_json(here.to_json())
    assert again == here and again.matches(here) and not here.differences(again)
    assert here.matches(dataclasses.replace(here, ram_gb=here.ram_gb + 64))  # RAM does not change a ranking


def foreign(field: str, here: Fingerprint) -> dict:
    """A value for ``field`` that differs from this machine's by construction, whatever the CPU."""
    if field == "cpu":
        return {"cpu": here.cpu + " (another model)"}
    if field == "flags":  # drop one flag this CPU has, or add one where it has none
        return {"flags": here.flags[:-1] if here.flags else ("avx2",)}
    if field == "cores":
        return {"cores": here.cores + 62}
    return {"arch": "riscv64" if here.arch != "riscv64" else "aarch64"}


@pytest.mark.parametrize("field", ["cpu", "flags", "cores", "arch"])
def test_a_foreign_machine_does_not_match(field: str) -> None:
    here = fingerprint()
    other = dataclasses.replace(here, **foreign(field, here))
    assert not here.matches(other) and [d.split(":")[0] for d in here.differences(other)] == [field]


@pytest.mark.parametrize(
    ("flags", "bf16"),
    [(("avx2", "fma"), False), (("avx2", "avx512f", "avx512_bf16"), True), (("avx2", "amx_tile", "amx_bf16"), True)],
)
def test_bf16_needs_avx512_bf16_or_amx(flags: tuple[str, ...], bf16: bool) -> None:
    assert Fingerprint("cpu", "x86_64", flags, 2, 8.0).has_bf16 is bf16


def test_from_json_rejects_a_malformed_record() -> None:
    record = fingerprint().to_json()
    del record["flags"]
    with pytest.raises(KeyError):
        Fingerprint.from_json(record)
