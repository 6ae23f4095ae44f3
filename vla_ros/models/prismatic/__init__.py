"""Native Prismatic VLA (OpenVLA's architecture): config, model, processor, presets, checkpoints."""

from vla_ros.models.prismatic.configuration_prismatic import PrismaticConfig
from vla_ros.models.prismatic.modeling_prismatic import PrismaticForActionPrediction
from vla_ros.models.prismatic.presets import PRESETS, make_config
from vla_ros.models.prismatic.processor_prismatic import PrismaticProcessor

__all__ = ["PRESETS", "PrismaticConfig", "PrismaticForActionPrediction", "PrismaticProcessor", "make_config"]
