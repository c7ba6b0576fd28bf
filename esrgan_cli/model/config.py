"""An RRDBNet's hyper-parameters, without torch: the registry, `esrgan models list` and the training config read
them, and only building a network (`arch.py`) needs torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

# BasicSR reaches x2 and x1 by pixel-unshuffling the input and keeping two x2
# upsampling stages; the oldest ESRGAN models instead vary the number of stages
# (none for x1 up to four for x16).
_DEFAULT_UNSHUFFLE = {1: 4, 2: 2, 4: 1, 8: 1, 16: 1}
MAX_UPSAMPLE_STAGES = 4


@dataclass(frozen=True)
class RRDBConfig:
    """Hyper-parameters of an RRDBNet. `unshuffle` defaults to BasicSR's choice for `scale`.

    `plus` selects ESRGAN+ (Rakotonirina & Rasoanaivo, ICASSP 2020): each residual dense block gains a bias-free
    1x1 convolution from its input, added after the second 3x3 conv, and a skip from that sum to the fourth.
    """

    in_channels: int = 3
    out_channels: int = 3
    num_feat: int = 64
    num_block: int = 23
    num_grow: int = 32
    scale: int = 4
    unshuffle: int = field(default=0)
    plus: bool = False

    def __post_init__(self) -> None:
        if self.unshuffle == 0:
            if self.scale not in _DEFAULT_UNSHUFFLE:
                raise ValueError(f"scale must be one of 1, 2, 4, 8, 16, got {self.scale}")
            object.__setattr__(self, "unshuffle", _DEFAULT_UNSHUFFLE[self.scale])
        for name in ("in_channels", "out_channels", "num_feat", "num_block", "num_grow", "scale"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        stages = math.log2(self.scale * self.unshuffle)
        if self.unshuffle not in (1, 2, 4) or stages != int(stages) or stages > MAX_UPSAMPLE_STAGES:
            raise ValueError(f"unsupported scale {self.scale} with pixel-unshuffle {self.unshuffle}")

    @property
    def upsample_stages(self) -> int:
        return int(math.log2(self.scale * self.unshuffle))

    def to_dict(self) -> dict[str, int | bool]:
        """The fields as plain data; `plus` only when set, so files and `info` of plain models read as before."""
        fields: dict[str, int | bool] = asdict(self)
        if not self.plus:
            del fields["plus"]
        return fields

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RRDBConfig:
        return cls(**json.loads(text))

    def macs_per_input_pixel(self) -> int:
        """Multiply-adds per input pixel: what a forward pass costs, for benchmarks and budgets."""
        u2 = self.unshuffle**2
        f, g = self.num_feat, self.num_grow
        rdb = (sum((f + i * g) * g for i in range(4)) + (f + 4 * g) * f) * 9 + (f * g if self.plus else 0)
        trunk = ((self.in_channels * u2 * f + f * f) * 9 + 3 * self.num_block * rdb) / u2
        ups = sum(f * f * 9 * 4**i for i in range(1, self.upsample_stages + 1)) / u2
        tail = (f * f + f * self.out_channels) * 9 * self.scale**2
        return int(round(trunk + ups + tail))
