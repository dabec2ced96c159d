"""Tiny random-weight models for trying a caption setup without downloading anything.

``patentclip-caption tiny-models OUT`` writes ``OUT/lm`` (a 2-layer Llama, a text model) and ``OUT/vlm`` (a LLaVA:
a 2-layer CLIP vision tower and a 2-layer Llama), each a complete model folder (config, safetensors weights,
tokenizer, chat template; the VLM with its processor) that ``from_pretrained``, ``vllm`` and ``transformers
serve`` load like any downloaded model. The tokenizer is a word-level one trained on the instructions, the caption
patterns and a few patent captions, with a newline token and "newline + list number" tokens (``\n1.`` ...
``\n20.``), so the models' random answers are words in numbered lines:
nonsense, but every path of a run (prompting, batching, parsing, cleaning, journaling, resuming, joining into
shards) is exercised. The test suite and ``benchmarks/caption_throughput.py`` use them; on a cluster they check the
SLURM set-up (``slurm/caption.sh``) in minutes before the real models run.

Weights are drawn from ``torch.manual_seed(seed)``: the same seed gives the same models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
from transformers import (CLIPImageProcessor, CLIPVisionConfig, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

from .instructions import BUILTIN_DIR

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
#: A newline token and "newline + list number" tokens: a random model then answers in lines, as list answers come.
LINE_TOKENS = ["\n"] + [f"\n{i}." for i in range(1, 21)]
#: A chat template in the common shape (role header, content, end of turn); images become the <image> token.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}")
CORPUS = [
    "system user assistant",
    "1. This is a drawing of a cup, classified as cups and mugs.",
    "2. This image features a round base, a curved handle and a tapered body.",
    "3. The lamp can also be referred to as a light fixture or a luminaire.",
    "4. A front view of a chair with four legs and a slatted back.",
    "5. The design of the bottle shows a cylindrical neck and a rectangular label panel.",
    "6. A perspective view of the ornamental design for a vehicle wheel with ten spokes.",
    "7. A side view of a shoe sole with a wavy tread pattern, used for walking.",
    "8. A top view of a table, used for dining, with an oval top.",
    "9. 10. 11. 12. 13. 14. 15. 16. 17. 18. 19. 20.",
]


#: The models' default generation settings (servers such as ``transformers serve`` use them): sampling, as the
#: generation_config.json of instruction-tuned models usually says.
SAMPLING = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, bos_token_id=1, eos_token_id=2,
                            pad_token_id=3)


def corpus() -> List[str]:
    """The tokenizer's training text: :data:`CORPUS` and the built-in instruction files."""
    return CORPUS + [p.read_text(encoding="utf-8") for p in sorted(BUILTIN_DIR.glob("*.toml"))]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer (words and punctuation, a newline token) with :data:`CHAT_TEMPLATE`."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.train_from_iterator(corpus(), trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    tok.add_tokens([AddedToken(t, normalized=False) for t in LINE_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", chat_template=CHAT_TEMPLATE)


def _text_config(vocab: int, hidden: int, layers: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1,
                       eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)


def make_tiny_models(out, seed: int = 0, hidden: int = 32, layers: int = 2) -> Dict[str, Path]:
    """Write ``out/lm`` and ``out/vlm`` (module docstring); returns their paths."""
    out = Path(out)
    tok = make_tokenizer()
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(_text_config(len(tok), hidden, layers))
    lm.generation_config = SAMPLING
    lm.save_pretrained(out / "lm")
    tok.save_pretrained(out / "lm")
    vision = CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                              num_attention_heads=4, image_size=32, patch_size=8, projection_dim=hidden)
    config = LlavaConfig(vision_config=vision, text_config=_text_config(len(tok), hidden, layers),
                         image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    vlm = LlavaForConditionalGeneration(config)
    vlm.generation_config = SAMPLING
    vlm.save_pretrained(out / "vlm")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                               chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1)
    processor.save_pretrained(out / "vlm")
    return {"lm": out / "lm", "vlm": out / "vlm"}
