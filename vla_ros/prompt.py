"""The model prompt: the one function that fills the prompt template (the native processor, the ``hf`` backend and
the tokenizer builder all call it, so every path gives the same string).

Kept free of model imports so that any module can use it (the template's home, ``configuration_prismatic``, is
imported only when the default is asked for).
"""

from __future__ import annotations


def build_prompt(instruction: str, template: str | None = None) -> str:
    """The prompt for ``instruction``: ``template`` (default: OpenVLA's ``PROMPT_TEMPLATE``,
    ``In: What action should the robot take to {instruction}?\\nOut:``) filled with the instruction stripped and
    lower-cased, as in OpenVLA's training data."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
    if template is None:
        from vla_ros.models.prismatic.configuration_prismatic import PROMPT_TEMPLATE

        template = PROMPT_TEMPLATE
    return template.format(instruction=instruction.strip().lower())
