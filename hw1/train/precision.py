"""`--precision`: which autocast dtype, memory layout and gradient scaling a run uses (SPEC §7), decided here only."""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass

import torch

CHOICES = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16 = (8, 0)  # Ampere and newer; what torch.cuda.is_bf16_supported(including_emulation=False) checks on CUDA


@dataclass(frozen=True)
class Precision:
    """A resolved choice: `name` is bf16, fp16 or fp32, on `device_type` (cpu or cuda)."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for fp32."""
        return _DTYPES.get(self.name)

    @property
    def memory_format(self) -> torch.memory_format:
        """channels_last on CUDA and with any autocast: a CPU bf16/fp16 run takes the GPU's layout path."""
        reduced = self.name != "fp32"
        return torch.channels_last if self.device_type == "cuda" or reduced else torch.contiguous_format

    @property
    def channels_last(self) -> bool:
        return self.memory_format == torch.channels_last

    @property
    def scales_gradients(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is a pass-through unless this is fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_gradients)

    def describe(self) -> str:
        if self.name == "fp32":
            return "fp32"
        layout = ", channels_last" if self.channels_last else ""
        scaling = ", gradient scaling" if self.scales_gradients else ""
        return f"{self.name} autocast{layout}{scaling}"


def choose(requested: str, device_type: str, capability: tuple[int, int] | None = None, *,
           grading: bool = False) -> Precision:
    """The pure rule. `auto`: fp32 on CPU and for grading; on CUDA bf16 from compute capability 8.0,
    else fp16 (V100 7.0, T4 and RTX 2080 Ti 7.5 only emulate bf16). An explicit choice is kept."""
    if requested not in CHOICES:
        raise ValueError(f"unknown precision {requested!r}")
    if requested != "auto":
        return Precision(requested, device_type)
    if device_type != "cuda" or grading:
        return Precision("fp32", device_type)
    native_bf16 = capability is not None and tuple(capability) >= NATIVE_BF16
    return Precision("bf16" if native_bf16 else "fp16", device_type)


def resolve(requested: str, device: torch.device, *, grading: bool = False) -> Precision:
    """`choose` for this process's device."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose(requested, device.type, capability, grading=grading)


def add_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, grading: bool = False,
            help: str | None = None) -> None:
    """The `--precision` flag: training and analysis default to auto, grading inference to fp32; `help`
    replaces the training text where a script uses the choice differently."""
    if grading:
        parser.add_argument("--precision", choices=CHOICES, default="fp32",
                            help="fp32 (the default; auto also means fp32 here, so the grade never rests on a "
                                 "reduced-precision near-tie), bf16 or fp16 autocast (default: %(default)s)")
    else:
        parser.add_argument("--precision", choices=CHOICES, default="auto", help=help or (
            "auto: bf16 autocast + channels_last on GPUs with native bf16 (compute capability >= 8.0), fp16 "
            "autocast with gradient scaling on older GPUs, fp32 on the CPU; bf16/fp16 on the CPU take the same "
            "path with CPU autocast (default: %(default)s)"))
