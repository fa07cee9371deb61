"""The tokenizer of a pretrained chat model: a ``tokenizers`` BPE plus its special tokens and chat template.

Two sources build it: a Hugging Face folder's ``tokenizer.json`` + ``tokenizer_config.json`` (the file as
shipped) and a GGUF file's ``tokenizer.ggml.*`` metadata (the vocabulary, merges and token types that
llama.cpp stores; :func:`byte_level_bpe` rebuilds the byte-level BPE from them). The chat template is Jinja
rendered in Jinja's immutable sandbox: a template can format messages but cannot reach Python objects,
files or attributes outside the sandbox's allow-list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from neuratlas.errors import NeuratlasError

# llama.cpp's pre-tokenizer names (``tokenizer.ggml.pre``) -> the text split that its merges were learned on.
# GPT-2's split is the ByteLevel pre-tokenizer's own regex; the others are written out (as in their
# tokenizer.json files).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_TOKENIZERS = {
    "default": "gpt2",
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
    "smollm": "digits+gpt2",  # SmolLM's tokenizer.json: Digits(individual) then GPT-2's ByteLevel split
    "starcoder": "digits+gpt2",
    "refact": "digits+gpt2",
    "codeshell": "digits+gpt2",
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


# end-of-turn tokens of common chat templates (ChatML, Llama 3, Phi-3): generation stops at them too
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>")


def byte_level_bpe(
    tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int] | None, pre: str, source: str
) -> Any:
    """A ``tokenizers.Tokenizer`` from a GGUF byte-level BPE: vocabulary (id order), merges ("a b"), token
    types (3 = control: special, matched whole; 4 = user-defined: matched whole, not special) and the
    pre-tokenizer name. ``source`` names the file in errors."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    split = GGUF_PRE_TOKENIZERS.get(pre)
    if split is None:
        raise NeuratlasError(
            f"{source}: pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(GGUF_PRE_TOKENIZERS))})"
        )
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split != "gpt2" and split != "digits+gpt2")
    if split == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif split == "digits+gpt2":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), "isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    types = list(token_types or [])
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4]
    if special:
        tok.add_special_tokens(special)
    if user:
        tok.add_tokens(user)
    return tok


class ChatTokenizer:
    """Text <-> ids for a pretrained chat model, and its chat template.

    ``encode`` adds the BOS token when the model was trained with one (``add_bos``); special tokens written
    in the text (``<|im_start|>``) encode as themselves, as in ``transformers``. ``stop_ids`` are the tokens
    that end an answer (EOS, and the template's end-of-turn token when it is a special token).
    """

    kind = "chat"

    def __init__(
        self,
        tok: Any,
        *,
        bos: str | None = None,
        eos: str | None = None,
        add_bos: bool = False,
        chat_template: str | None = None,
        extra_stop: Iterable[str] = (),
        source: str = "tokenizer",
    ) -> None:
        self.tok, self.bos, self.eos, self.add_bos = tok, bos, eos, add_bos
        self.chat_template, self.source = chat_template, source
        self.vocab_size = tok.get_vocab_size()
        self.bos_id = tok.token_to_id(bos) if bos else None
        self.eos_id = tok.token_to_id(eos) if eos else None
        self.eot_id = self.eos_id
        stops = {self.eos_id} | {tok.token_to_id(s) for s in (*extra_stop, *END_OF_TURN)}
        self.stop_ids = sorted(i for i in stops if i is not None)
        self._template = None

    # --- text <-> ids ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    # --- the chat template ----------------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation (a list of {"role", "content"}), as the model was trained on."""
        if not self.chat_template:
            raise NeuratlasError(f"{self.source} has no chat template (use the raw prompt instead)")
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        if self._template is None:

            def raise_exception(message: str) -> None:
                raise jinja2.TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
            env.globals["raise_exception"] = raise_exception
            try:
                self._template = env.from_string(self.chat_template)
            except jinja2.TemplateError as e:
                raise NeuratlasError(f"{self.source}: the chat template does not parse ({e})") from None
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos or "",
                eos_token=self.eos or "",
            )
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise NeuratlasError(
                f"{self.source}: the chat template failed to render ({type(e).__name__}: {e})"
            ) from None

    def encode_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered conversation (the template writes any BOS token itself)."""
        text = self.render(messages, add_generation_prompt)
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "json": self.tok.to_str(),
            "bos": self.bos,
            "eos": self.eos,
            "add_bos": self.add_bos,
            "chat_template": self.chat_template,
            "stop": [self.tok.id_to_token(i) for i in self.stop_ids],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatTokenizer:
        from tokenizers import Tokenizer

        return cls(
            Tokenizer.from_str(d["json"]),
            bos=d.get("bos"),
            eos=d.get("eos"),
            add_bos=d.get("add_bos", False),
            chat_template=d.get("chat_template"),
            extra_stop=d.get("stop", ()),
        )

    # --- a Hugging Face folder ------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatTokenizer:
        """``tokenizer.json`` with the special tokens and template of ``tokenizer_config.json`` (or of
        ``chat_template.jinja`` / ``chat_template.json``, where newer ``transformers`` versions save it)."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise NeuratlasError(f"{folder} has no tokenizer.json")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises its own Exception type on bad JSON
            raise NeuratlasError(f"{path}: not a readable tokenizer ({str(e)[:120]})") from None
        conf: dict[str, Any] = {}
        conf_path = folder / "tokenizer_config.json"
        if conf_path.is_file():
            conf = _read_json(conf_path)
        template = conf.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if template is None and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        if template is None and (folder / "chat_template.json").is_file():
            template = _read_json(folder / "chat_template.json").get("chat_template")

        def content(v: Any) -> str | None:
            return v.get("content") if isinstance(v, dict) else v

        eos, bos = content(conf.get("eos_token")), content(conf.get("bos_token"))
        extra = []
        gen = folder / "generation_config.json"
        if gen.is_file():
            ids = _read_json(gen).get("eos_token_id")
            extra = [tok.id_to_token(i) for i in (ids if isinstance(ids, list) else [ids]) if i is not None]
        return cls(
            tok,
            bos=bos,
            eos=eos,
            add_bos=bool(conf.get("add_bos_token", False)),
            chat_template=template,
            extra_stop=[e for e in extra if e],
            source=str(folder),
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NeuratlasError(f"{path}: not readable JSON ({e})") from None
