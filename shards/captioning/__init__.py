"""The caption stage: captions of design-patent drawings as the seed papers make them (docs/captioning.md).

A captioner (a vision-language model) describes each drawing; a language model turns the description and the
record's fields into N diverse captions; the answers are parsed, cleaned and counted; the result is a captions file
that ``patentclip-shards build --captions`` joins, with the provenance of every caption. Modules, one concern each:

* :mod:`.instructions`: the versioned instruction files (``instructions/*.toml``, package data) and their ids;
* :mod:`.prompts`: record -> drawing fields -> chat messages; request seeds as a pure function;
* :mod:`.engines`: transformers (local folder), vLLM (offline, GPUs), OpenAI-compatible HTTP endpoints;
* :mod:`.parsing`: answers -> candidate captions -> kept, or dropped with a counted reason;
* :mod:`.pipeline`: the stages for one batch of drawings, and the captions-file line;
* :mod:`.work`: plan, parts, worker identity (processes, ranks, SLURM arrays), journal, atomic commit;
* :mod:`.runner`: one worker's loop (read-ahead, progress, signals); :mod:`.report`: merge and summary;
* :mod:`.compat`: the transformers and vLLM names this package depends on;
* :mod:`.cli`: ``patentclip-caption``.
"""
