"""Prompt templates that wrap a text before it is embedded.

A template is a string with one ``{text}`` placeholder. Two are named:

* ``"none"`` — the text as it is;
* ``"prompteol"`` — PromptEOL, ``This sentence : "<text>" means in one word:"`` (the prompt of the
  MoEE paper), which asks the model to compress the sentence into the next token, so the last
  token's state and routing summarise it.

Any other string containing ``{text}`` is a custom template.

Example:
    >>> from workbench.embeddings.templates import apply_template
    >>> apply_template("a cat", "prompteol")
    'This sentence : "a cat" means in one word:"'
    >>> apply_template("a cat", "Topic of: {text} ->")
    'Topic of: a cat ->'
"""

from __future__ import annotations

TEMPLATES = {
    "none": "{text}",
    "prompteol": 'This sentence : "{text}" means in one word:"',
}


def resolve_template(template: str | None) -> str:
    """The template string of a name (``"none"``, ``"prompteol"``) or a custom ``{text}`` string.

    Raises:
        ValueError: for a string that is neither a known name nor contains ``{text}``.
    """
    if template is None:
        return TEMPLATES["none"]
    if not isinstance(template, str):
        raise TypeError(f"template must be a string, got {type(template).__name__}")
    if template.lower() in TEMPLATES:
        return TEMPLATES[template.lower()]
    if template.count("{text}") != 1:
        raise ValueError(f"template {template!r} is neither a known name ({', '.join(TEMPLATES)}) nor a "
                         "custom string with exactly one '{text}' placeholder")
    return template


def apply_template(text: str, template: str | None = "none") -> str:
    """``text`` wrapped in ``template`` (a name or a custom ``{text}`` string)."""
    # str.replace, not str.format: texts and templates may hold braces (code, JSON)
    return resolve_template(template).replace("{text}", text)
