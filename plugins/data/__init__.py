"""The streaming patent data pipeline (dataset plugin ``patent-wds``), as a package of stages.

Per data-loader worker::

    shard list --(seed, epoch)--> this rank's and worker's shard groups        shard_groups.py
      -> tar members -> samples; corrupt members skipped and counted;         tars.py
         the next group read ahead
      -> patents -> one example per drawing, paired (multi-view) with         patents.py
         another view; the sampler's repeats; the group shuffle, repeats
         of a drawing at least a batch apart
      -> decode, caption draw, open_clip preprocess + patent augmentations    examples.py
         seeded per image (grey drawings on one channel: grey_preprocess.py;
         uint8 pixels with the default image transport: image_transport.py)
      -> batches of the schema in batch.py, with the worker's position        batch.py, stream.py
    the workers' batches in round-robin order, the resume state, the          loader.py
    image transport that finishes the images on the consumer's device
    the registered builder: open_clip's flags -> the loader                   builder.py

Every random choice is a pure function of (seed, epoch, position or key) (keys.py), so a run is repeatable
without hidden RNG state and a resumed run continues with exactly the batches of the uninterrupted one. The
shard sample format the stages read is defined in shards/sample_format.py.
"""
