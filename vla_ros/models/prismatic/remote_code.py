"""Make a vla_ros checkpoint directory loadable as "remote code" (``trust_remote_code``), like OpenVLA's HF release.

Writes two small modules into the directory that import the installed ``vla_ros`` (so a checkpoint can be served
through the ``hf`` backend, and tools that only know transformers' auto classes can load it) and registers them in
``auto_map``. The code itself stays in ``vla_ros``; nothing is copied.
"""

from __future__ import annotations

import json
from pathlib import Path

MODELING = '''"""Remote-code entry point of a vla_ros checkpoint (needs the vla_ros package installed)."""
from vla_ros.models.prismatic.configuration_prismatic import PrismaticConfig  # noqa: F401
from vla_ros.models.prismatic.modeling_prismatic import PrismaticForActionPrediction  # noqa: F401
'''

PROCESSING = '''"""Remote-code processor of a vla_ros checkpoint (needs the vla_ros package installed)."""
from transformers import PreTrainedTokenizerFast

from vla_ros.models.prismatic.configuration_prismatic import PrismaticConfig
from vla_ros.models.prismatic.processor_prismatic import PrismaticProcessor


class VlaRosProcessor(PrismaticProcessor):
    """OpenVLA's processor contract: processor(prompt, image) -> input_ids, attention_mask, pixel_values.
    No centre crop here: like OpenVLA's, callers crop before (the hf backend does when configured)."""

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):  # AutoProcessor calls it; nothing to register
        return None

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)  # AutoTokenizer would re-ask for remote code
        return cls(tokenizer, PrismaticConfig.from_pretrained(path), center_crop=False)
'''


def export_remote_code(checkpoint_dir: str | Path) -> None:
    d = Path(checkpoint_dir)
    (d / "modeling_vla_ros.py").write_text(MODELING)
    (d / "processing_vla_ros.py").write_text(PROCESSING)
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_vla_ros.PrismaticConfig",
                       "AutoModelForVision2Seq": "modeling_vla_ros.PrismaticForActionPrediction",
                       "AutoModelForImageTextToText": "modeling_vla_ros.PrismaticForActionPrediction"}
    cfg_path.write_text(json.dumps(cfg, indent=2))
    proc = {"processor_class": "VlaRosProcessor", "auto_map": {"AutoProcessor": "processing_vla_ros.VlaRosProcessor"}}
    (d / "processor_config.json").write_text(json.dumps(proc, indent=2))
