"""Turn (prompt, response) text into token ids: chat template when the tokenizer has one, else a plain template."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on prompt tokens: the loss covers response tokens only


class PromptFormatter:
    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template: str | None = None, system_prompt: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.use_chat = template is None and bool(getattr(tokenizer, "chat_template", None))
        self.template = template or PLAIN_TEMPLATE
        self.system_prompt = system_prompt

    def prompt_text(self, prompt: str) -> str:
        if not self.use_chat:
            return self.template.format(prompt=prompt)
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, prompt: str) -> list[int]:
        # Chat templates already carry their BOS; the plain template gets the tokenizer's own specials.
        return self.tokenizer(self.prompt_text(prompt), add_special_tokens=not self.use_chat)["input_ids"]

    def encode_pair(self, prompt: str, response: str, max_length: int) -> Encoded:
        prompt_ids = self.encode_prompt(prompt)
        response_ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if self.tokenizer.eos_token_id is not None:
            response_ids = [*response_ids, self.tokenizer.eos_token_id]
        ids = (prompt_ids + response_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
        return Encoded(ids, labels)
