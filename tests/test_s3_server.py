"""The test S3 server itself (tests/s3_server.py): it must hold as many buckets as the suite makes in one session,
whatever the free space of the disk it runs on (CI's disk is fuller than a developer's)."""
from s3_server import S3Server


def test_more_buckets_than_a_small_disk_would_give_volumes(small_disk):
    # on 300 MiB free, `weed mini` left to size itself allows fewer volumes than this; one bucket takes one
    disk = small_disk(300)
    server = S3Server(str(disk / "s3")).start()
    try:
        fs = server.filesystem()
        for i in range(40):
            server.make_bucket(f"bucket-{i:02d}")
            fs.pipe(f"bucket-{i:02d}/a/object", bytes([i]) * 50_000)
        assert [fs.cat(f"bucket-{i:02d}/a/object")[:1] for i in range(40)] == [bytes([i]) for i in range(40)]
    finally:
        server.stop()
