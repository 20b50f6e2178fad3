"""The GPU's energy use, from NVML's cumulative energy counter.

NVML (libnvidia-ml.so.1, installed with the NVIDIA driver) counts the millijoules a device
has used since the driver loaded (`nvmlDeviceGetTotalEnergyConsumption`, Volta and newer).
An EnergyMeter remembers the reading at start and reports the joules used since, which is
what `inflightd:energy_joules_total` exports. It is called through ctypes, so no Python
package is needed; the library handle can be injected (`library=`) for tests.

Where there is no GPU, no driver or no counter, `open_energy_meter` returns None and the
metric is left out rather than reported as zero.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

logger = logging.getLogger("inflightd.engine")

NVML_LIBRARY = "libnvidia-ml.so.1"
NVML_SUCCESS = 0
MILLIJOULES_PER_JOULE = 1000.0


class EnergyMeterUnavailable(RuntimeError):
    """NVML or its energy counter cannot be used here; the message says which call failed."""


def load_nvml() -> Any:
    try:
        return ctypes.CDLL(NVML_LIBRARY)
    except OSError as exc:
        raise EnergyMeterUnavailable(f"cannot load {NVML_LIBRARY}: {exc}") from exc


def _check(status: int, call: str) -> None:
    if status != NVML_SUCCESS:
        raise EnergyMeterUnavailable(f"{call} failed with NVML status {status}")


class EnergyMeter:
    """Joules one GPU has used since the meter was opened."""

    def __init__(self, *, library: Any, device_handle: ctypes.c_void_p) -> None:
        self._library = library
        self._device_handle = device_handle
        self._start_mj = self.total_millijoules()

    @classmethod
    def open(cls, *, device_index: int = 0, pci_bus_id: str | None = None,
             library: Any = None) -> "EnergyMeter":
        """The meter of the device with that PCI bus id ("00000000:3B:00.0"), else of NVML's
        device number `device_index`. Raises EnergyMeterUnavailable."""
        library = load_nvml() if library is None else library
        _check(library.nvmlInit_v2(), "nvmlInit_v2")
        handle = ctypes.c_void_p()
        if pci_bus_id is not None:
            _check(library.nvmlDeviceGetHandleByPciBusId_v2(
                ctypes.c_char_p(pci_bus_id.encode()), ctypes.pointer(handle)),
                f"nvmlDeviceGetHandleByPciBusId_v2({pci_bus_id!r})")
        else:
            _check(library.nvmlDeviceGetHandleByIndex_v2(
                ctypes.c_uint(device_index), ctypes.pointer(handle)),
                f"nvmlDeviceGetHandleByIndex_v2({device_index})")
        return cls(library=library, device_handle=handle)

    def total_millijoules(self) -> int:
        """NVML's counter: millijoules since the driver loaded."""
        energy = ctypes.c_ulonglong()
        _check(self._library.nvmlDeviceGetTotalEnergyConsumption(
            self._device_handle, ctypes.pointer(energy)), "nvmlDeviceGetTotalEnergyConsumption")
        return energy.value

    def joules_since_start(self) -> float:
        # A driver reload restarts NVML's count; never report less than nothing.
        used_mj = max(0, self.total_millijoules() - self._start_mj)
        return used_mj / MILLIJOULES_PER_JOULE


def cuda_pci_bus_id(device: str) -> str | None:
    """The PCI bus id of a torch CUDA device ("cuda", "cuda:1"), as NVML writes it; None if
    torch does not report it. CUDA's device numbers may differ from NVML's (device order,
    CUDA_VISIBLE_DEVICES); the bus id names the same device for both."""
    import torch  # only the engine process, where torch is loaded anyway

    if not torch.cuda.is_available():
        raise EnergyMeterUnavailable(f"{device} is not available: torch sees no CUDA device")
    index = torch.device(device).index
    props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None
                                             else index)
    parts = [getattr(props, name, None) for name in
             ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if any(part is None for part in parts):
        return None
    domain, bus, dev = parts
    return f"{domain:08x}:{bus:02x}:{dev:02x}.0"


def open_energy_meter(device: str, *, library: Any = None) -> EnergyMeter | None:
    """A meter for the engine's device (torch's name for it), or None on a CPU or where
    NVML has no energy counter for it."""
    if not device.startswith("cuda"):
        return None
    try:
        bus_id = cuda_pci_bus_id(device)
        index = 0 if bus_id is not None else (_device_index(device) or 0)
        return EnergyMeter.open(device_index=index, pci_bus_id=bus_id, library=library)
    except (RuntimeError, AttributeError, ValueError) as exc:  # incl. EnergyMeterUnavailable
        logger.info("no GPU energy counter: %s", exc)
        return None


def _device_index(device: str) -> int | None:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else None
