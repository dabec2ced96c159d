"""The upstream names the caption engines use, declared so that a test fails when a new release moves one.

``tests/test_caption_engines.py`` imports every module below and checks every name, and the keyword arguments
listed in ``*_PARAMETERS`` against the callables' signatures: always for transformers (a dependency of the
``caption`` extra), and for vLLM where it is installed (GPU nodes; otherwise the test is skipped and says so).
The OpenAI chat-completions fields the HTTP engine sends and reads are listed for the same reason: an endpoint that
does not accept them is not OpenAI-compatible for our purpose.
"""
from __future__ import annotations

#: transformers: module -> names used by engines/hf.py (and engines/vllm.py for the config check).
TRANSFORMERS_NAMES = {
    "transformers": ["AutoConfig", "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoProcessor",
                     "AutoTokenizer", "GenerationConfig", "LogitsProcessor", "LogitsProcessorList",
                     "TopPLogitsWarper"],
    "transformers.models.auto.modeling_auto": ["MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"],
}
#: transformers: "module:attribute path" -> keyword arguments engines/hf.py passes.
TRANSFORMERS_PARAMETERS = {
    "transformers:ProcessorMixin.apply_chat_template": ["add_generation_prompt", "tokenize", "return_dict",
                                                        "return_tensors", "processor_kwargs"],
    "transformers:PreTrainedTokenizerBase.apply_chat_template": ["add_generation_prompt", "tokenize", "return_dict",
                                                                 "return_tensors", "padding"],
    "transformers:GenerationMixin.generate": ["generation_config", "logits_processor"],
}

#: vLLM: module -> names used by engines/vllm.py.
VLLM_NAMES = {"vllm": ["LLM", "SamplingParams", "__version__"]}
#: vLLM: "module:attribute path" -> keyword arguments engines/vllm.py passes.
VLLM_PARAMETERS = {
    "vllm:LLM.__init__": ["model", "dtype", "seed", "trust_remote_code"],
    "vllm:LLM.chat": ["messages", "sampling_params", "use_tqdm"],
}
#: vLLM keyword arguments passed through to its engine arguments (``LLM(**kwargs)`` -> ``EngineArgs``).
VLLM_ENGINE_ARGS = ["limit_mm_per_prompt"]
#: vLLM SamplingParams fields set per request, and RequestOutput / CompletionOutput fields read.
VLLM_SAMPLING_FIELDS = ["n", "temperature", "top_p", "max_tokens", "seed"]
VLLM_OUTPUT_FIELDS = {"RequestOutput": ["outputs", "prompt_token_ids"],
                      "CompletionOutput": ["text", "token_ids", "finish_reason"]}
#: vLLM's chat input: an OpenAI message content part for an image (``LLM.chat`` documents the OpenAI format).
VLLM_IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}

#: OpenAI chat completions: request fields sent, response fields read (engines/http.py).
OPENAI_REQUEST_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
                         "n"]
OPENAI_RESPONSE_FIELDS = ["choices[0].message.content", "choices[0].finish_reason", "usage.prompt_tokens",
                          "usage.completion_tokens"]
