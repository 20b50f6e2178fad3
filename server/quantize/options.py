"""What `inflightd quantize` was asked to do, validated before any weight is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# method -> (bits it writes, the bits --bits may ask for)
METHOD_BITS = {"int8_wo": (8, (8,)), "int4_wo": (4, (4,)), "awq": (4, (4,)),
               "gptq": (4, (4, 8)), "w8a8_sq": (8, (8,)), "fp8": (8, (8,))}
METHODS = tuple(METHOD_BITS)
CALIBRATED = ("awq", "gptq", "w8a8_sq")  # these run the model on calibration prompts
PER_CHANNEL_ONLY = ("int8_wo", "w8a8_sq", "fp8")  # one scale per output channel
# The packaged ShareGPT sample has 500 prompts: the first 400 calibrate, the last 100 are
# held out for the accuracy benchmark (bench/accuracy.py), so no scheme is scored on the
# prompts it was calibrated on.
SHAREGPT_CALIBRATION_PROMPTS = 400
DEVICES = ("auto", "cpu", "cuda")


class QuantizeError(ValueError):
    """A quantize request that cannot run; the message names the option to change."""


@dataclass(frozen=True)
class QuantizeOptions:
    model: str  # an HF directory, or the default model's name
    method: str
    output: Path
    group_size: int | None = None  # None: 128, or 64 or 32 where 128 does not fit (4 bits)
    bits: int | None = None  # None: the method's (gptq: 4)
    calibration: Path | None = None  # JSONL of texts; None: the packaged ShareGPT sample
    num_calibration_samples: int = SHAREGPT_CALIBRATION_PROMPTS
    device: str = "auto"
    force: bool = False  # replace an existing output directory
    awq_scales: bool = False  # gptq, 4 bits: AWQ's scales folded in before GPTQ (gptq.py)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizeError(f"--method must be one of {', '.join(METHODS)}, "
                                f"got {self.method!r}")
        default_bits, allowed = METHOD_BITS[self.method]
        if self.bits is not None and self.bits not in allowed:
            raise QuantizeError(f"--bits {self.bits} is not available with --method "
                                f"{self.method} (it writes {' or '.join(map(str, allowed))} "
                                "bits)")
        self._check_group_size()
        if self.calibration is not None and self.method not in CALIBRATED:
            raise QuantizeError(f"--calibration is read only by {', '.join(CALIBRATED)}; "
                                f"{self.method} rounds each weight to nearest")
        if self.num_calibration_samples < 1:
            raise QuantizeError(f"--num-calibration-samples must be >= 1, "
                                f"got {self.num_calibration_samples}")
        if self.calibration is None and \
                self.num_calibration_samples > SHAREGPT_CALIBRATION_PROMPTS:
            raise QuantizeError(
                f"--num-calibration-samples is at most {SHAREGPT_CALIBRATION_PROMPTS} with the "
                "packaged ShareGPT sample (its last 100 prompts are held out for the accuracy "
                "benchmark); give --calibration FILE for more")
        if self.awq_scales and (self.method != "gptq" or self.weight_bits != 4):
            raise QuantizeError("--awq-scales applies to --method gptq at 4 bits (awq folds "
                                "its scales anyway; their search rounds to 4 bits)")
        if self.device not in DEVICES:
            raise QuantizeError(f"--device must be one of {', '.join(DEVICES)}, "
                                f"got {self.device!r}")

    def _check_group_size(self) -> None:
        group = self.group_size
        if group is None:
            return
        if self.method in PER_CHANNEL_ONLY:
            raise QuantizeError(f"--group-size does not apply to --method {self.method}, which "
                                "keeps one scale per output channel")
        if group == -1 and self.method == "awq":
            raise QuantizeError("--method awq needs groups (AutoAWQ's layout has no per-channel "
                                "variant); try --group-size 128")
        if group != -1 and (group < 2 or group % 2):
            raise QuantizeError(f"--group-size must be an even number of input columns, or -1 "
                                f"for one group per channel; got {group}")

    @property
    def weight_bits(self) -> int:
        return self.bits if self.bits is not None else METHOD_BITS[self.method][0]

    @property
    def calibrated(self) -> bool:
        return self.method in CALIBRATED
