"""patentclip.evaluation: prior-art search over an index of every drawing (``patentclip-index``,
``patentclip-search``, the search page) and the evaluation code that shares its ranking rules."""
