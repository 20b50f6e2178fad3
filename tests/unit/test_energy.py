"""The NVML energy reader against a fake libnvidia-ml handle: the calls it makes through
ctypes, millijoules to joules, the delta since the meter opened, and the failures that make
it unavailable (so the metric is left out); then how a reading becomes the two metrics."""

from __future__ import annotations

import ctypes

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.api.metrics import ServerMetrics
from server.engine.service.energy import (EnergyMeter, EnergyMeterUnavailable, cuda_pci_bus_id,
                                  open_energy_meter)
from server.engine.service.info import EngineStats

NVML_ERROR_NOT_SUPPORTED = 3
DEVICE_HANDLE = 0xD00D


class FakeNvml:
    """Stands in for ctypes.CDLL("libnvidia-ml.so.1"): same function names, same pointer
    arguments, status codes as return values. Each energy read returns the next reading."""

    def __init__(self, readings_mj: list[int], *, energy_status: int = 0,
                 init_status: int = 0) -> None:
        self._readings = list(readings_mj)
        self._energy_status = energy_status
        self._init_status = init_status
        self.opened_by: tuple | None = None

    def nvmlInit_v2(self) -> int:
        return self._init_status

    def nvmlDeviceGetHandleByIndex_v2(self, index: ctypes.c_uint, handle) -> int:
        self.opened_by = ("index", index.value)
        handle.contents.value = DEVICE_HANDLE
        return 0

    def nvmlDeviceGetHandleByPciBusId_v2(self, bus_id: ctypes.c_char_p, handle) -> int:
        self.opened_by = ("pci", bus_id.value.decode())
        handle.contents.value = DEVICE_HANDLE
        return 0

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: ctypes.c_void_p, energy) -> int:
        assert handle.value == DEVICE_HANDLE  # the handle NVML gave back, passed on as is
        if self._energy_status:
            return self._energy_status
        energy.contents.value = self._readings.pop(0)
        return 0


def test_meter_reports_joules_used_since_it_opened():
    # NVML counts millijoules since the driver loaded: 5 MJ were used before we started.
    nvml = FakeNvml([5_000_000_000, 5_000_250_500, 5_001_000_000])
    meter = EnergyMeter.open(device_index=2, library=nvml)
    assert nvml.opened_by == ("index", 2)
    assert meter.joules_since_start() == pytest.approx(250.5)
    assert meter.joules_since_start() == pytest.approx(1000.0)


def test_meter_opens_the_device_by_pci_bus_id_when_given():
    nvml = FakeNvml([7, 7])
    meter = EnergyMeter.open(pci_bus_id="00000000:3b:00.0", library=nvml)
    assert nvml.opened_by == ("pci", "00000000:3b:00.0")
    assert meter.joules_since_start() == 0.0


def test_a_counter_that_restarts_reports_zero_not_a_negative_amount():
    meter = EnergyMeter.open(library=FakeNvml([9_000, 1_000]))
    assert meter.joules_since_start() == 0.0


@pytest.mark.parametrize("fake", [FakeNvml([], init_status=9),
                                  FakeNvml([], energy_status=NVML_ERROR_NOT_SUPPORTED)],
                         ids=["driver-not-loaded", "no-energy-counter"])
def test_nvml_failures_make_the_meter_unavailable(fake):
    with pytest.raises(EnergyMeterUnavailable, match="NVML status"):
        EnergyMeter.open(library=fake)


def test_no_meter_on_a_cpu_device():
    assert open_energy_meter("cpu", library=FakeNvml([1, 2])) is None


def test_no_meter_where_cuda_is_missing():
    # This machine has no GPU: asking torch for the device fails, and the meter is None
    # (the metric is absent) instead of the engine failing to start.
    assert open_energy_meter("cuda:0", library=FakeNvml([1, 2])) is None
    with pytest.raises(EnergyMeterUnavailable, match="no CUDA device"):
        cuda_pci_bus_id("cuda:0")


def _stats(**fields) -> EngineStats:
    base = dict(num_running=0, num_waiting=0, num_free_blocks=4, num_blocks=4,
                num_evictable_blocks=0, num_used_blocks=0, kv_cache_usage=0.0,
                prefix_cache_queries=0, prefix_cache_hits=0, num_preemptions=0,
                prompt_tokens_total=10, generation_tokens_total=600)
    return EngineStats(**{**base, **fields})


def _energy_samples(stats: EngineStats) -> dict[str, float]:
    metrics = ServerMetrics(model_name="m", latest_stats=lambda: stats)
    families = text_string_to_metric_families(metrics.render().decode())
    return {s.name: s.value for f in families for s in f.samples
            if "joule" in s.name and s.labels == {"model_name": "m"}}


def test_an_energy_reading_becomes_a_joules_counter_and_a_tokens_per_joule_gauge():
    assert _energy_samples(_stats(energy_joules=240.0)) == {
        "inflightd:energy_joules_total": 240.0,
        "inflightd:output_tokens_per_joule": 2.5}  # 600 tokens / 240 J


def test_without_an_energy_counter_both_metrics_are_absent():
    assert _energy_samples(_stats(energy_joules=None)) == {}
    # nothing used yet: the counter is there, the ratio is not (it has no value yet)
    assert _energy_samples(_stats(energy_joules=0.0)) == {"inflightd:energy_joules_total": 0.0}
