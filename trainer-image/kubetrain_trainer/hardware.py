"""Process and GPU figures for the metrics: psutil always, NVML when there is a GPU.

Everything is guarded: no GPU, no NVML library or a failing driver call just
means the GPU figures are absent (reported as -1 and not exported).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class ProcessProbe:
    """CPU seconds and RSS of this process; NVML figures of its GPU (if any), sampled at most once a second."""

    def __init__(self, cuda_device_index: int | None = None, min_interval: float = 1.0):
        self._proc = None
        try:
            import psutil

            self._proc = psutil.Process()
        except Exception:  # noqa: BLE001
            log.warning("psutil unavailable: process CPU/RSS metrics disabled")
        self._nvml = None
        self._handle = None
        self._min_interval = min_interval
        self._last = 0.0
        self._gpu = (-1.0, -1.0, -1.0, -1.0)
        if cuda_device_index is not None:
            self._init_nvml(cuda_device_index)

    def _init_nvml(self, index: int) -> None:
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            if not uuid.startswith("GPU-"):
                uuid = "GPU-" + uuid
            try:
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception:  # noqa: BLE001 - fall back to the index (no CUDA_VISIBLE_DEVICES remapping)
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception as exc:  # noqa: BLE001
            log.warning("NVML unavailable (%s): GPU metrics disabled", exc)
            self._nvml = None

    def cpu_seconds(self) -> float:
        if self._proc is None:
            return 0.0
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    def rss_bytes(self) -> float:
        if self._proc is None:
            return 0.0
        return float(self._proc.memory_info().rss)

    def gpu(self) -> tuple[float, float, float, float]:
        """(utilisation 0–1, memory used bytes, power W, energy J since driver load) or -1s."""
        if self._nvml is None:
            return self._gpu
        now = time.monotonic()
        if now - self._last < self._min_interval:
            return self._gpu
        self._last = now
        n = self._nvml
        try:
            util = n.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0
            mem = float(n.nvmlDeviceGetMemoryInfo(self._handle).used)
            power = n.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            try:
                energy = n.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0
            except Exception:  # noqa: BLE001 - pre-Volta GPUs
                energy = -1.0
            self._gpu = (float(util), mem, float(power), float(energy))
        except Exception as exc:  # noqa: BLE001
            log.warning("NVML query failed (%s): GPU metrics disabled", exc)
            self._nvml = None
            self._gpu = (-1.0, -1.0, -1.0, -1.0)
        return self._gpu

    def device_name(self) -> str | None:
        if self._nvml is None:
            return None
        try:
            name = self._nvml.nvmlDeviceGetName(self._handle)
            return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001
            return None
