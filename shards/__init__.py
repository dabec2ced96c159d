"""patentclip.shards: patent records in (importers, manifest, synthetic patents) and WebDataset shards out."""
