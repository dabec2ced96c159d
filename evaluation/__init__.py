"""Evaluating trained models, as the papers measure them (``patentclip-eval``), exporting them
(``patentclip-export``) and searching prior art with them (``patentclip-index``, ``patentclip-search``); one concern
per module:

    metrics/          the metric definitions, pure torch (ranking: retrieval and image-text recall; ranks: the
                      rankings they count on, without full sorts; classification)
    settings.py       how an evaluation is run (EvalSettings)
    features.py       model + loader -> normalised features and metadata; the zero-shot classifier
    retrieval.py      image-to-image retrieval under the papers' protocol (prior-art filter, head / tail)
    citations.py      relevance by the examiner's citations (--relevance citation): the citations read from shards
    classification.py zero-shot, linear-probe and classification-head accuracy
    image_text.py     image<->text recall
    run.py            the whole evaluation of one model (EvalResult) and the headline table
    during_training.py  the in-training evaluation hook (tensorboard, results.jsonl)
    loading.py        a model to evaluate from a checkpoint, an open_clip tag or fresh weights
    cli.py            the ``patentclip-eval`` command line
    linear_probe.py   the logistic-regression probe on frozen features
    report.py         the HTML report and its figures
    export.py         ``patentclip-export``: a checkpoint -> an open_clip model folder

and prior-art search over an index of every drawing (docs/search.md):

    index.py          exact and approximate search with filters (and the index's names in one import)
    index_store.py    the index folder format: Parquet parts, index.json, the faiss file's commit
    index_faiss.py    the faiss kinds (flat, ivf, hnsw), their search and measured recall
    index_shards.py   a shard set read for the index: drawings with their tar offsets, problems, classes, sizes
    index_build.py    ``patentclip-index``: embed shard sets into an index over ranks, resumable, incremental
    search.py         ``patentclip-search``: image / text / patent queries, grouped by patent, JSON
    serve.py, static/ the search page (``patentclip-search serve``)
    faiss_compat.py   the faiss names the index uses

Checkpoints are read with :mod:`patentclip.launch.checkpoint_format`; the head / tail split of the classes is the
class table's (:meth:`patentclip.plugins.classes.ClassTable.head_mask`).
"""
