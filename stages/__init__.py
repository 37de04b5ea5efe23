"""The networks of the cascade, as plain `nn.Module`s that know nothing of noise schedules.

Every network is built from its frozen config dataclass (`Net(config)`, `Net.config_class`),
takes `(x, t, **conditions)` with t a (B,) float tensor on the [0, 1000) scale, and returns
the raw prediction. `NETWORKS` names the classes so that a checkpoint can say which to build.
"""

from .decoder import Decoder, DecoderConfig
from .prior import PriorConfig, PriorTransformer
from .superres import SuperRes, SuperResConfig
from .text_encoder import TextTransformer
from .unet import UNet, UNetConfig

NETWORKS = {"PriorTransformer": PriorTransformer, "Decoder": Decoder, "SuperRes": SuperRes}

__all__ = [
    "NETWORKS",
    "Decoder",
    "DecoderConfig",
    "PriorConfig",
    "PriorTransformer",
    "SuperRes",
    "SuperResConfig",
    "TextTransformer",
    "UNet",
    "UNetConfig",
]
