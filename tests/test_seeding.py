"""The one seeded-hash rule (plugins/seeding.py): pinned values, so that no change of it goes unnoticed (every
split, shard order and batch depends on them), and its users call it rather than a copy."""
import hashlib
from pathlib import Path

from patentclip.plugins import samplers, seeding
from patentclip.plugins.seeding import stable_index, stable_int, uniform01
from patentclip.shards import build_plan


def test_pinned_values():
    # values of the rule as the shard builder and the pipeline have always computed it (blake2b-64 of the parts
    # joined by U+001F, little endian)
    assert stable_int("x") == 5717441744405258058
    assert stable_int("split", 0, "US123") == 7549338712594417880
    assert stable_int("aug", "anchor", 0, 2, "a_00", 1) == 12253768808437093145
    assert uniform01("x") == 0.30994313801717455
    assert uniform01("sampler", 3, 1, "k_01") == 0.771491106864559
    assert stable_index(7, "split", 0, "US123") == 1 and stable_index(1, "anything") == 0
    # an independent computation of the same rule
    h = int.from_bytes(hashlib.blake2b("a\x1f1\x1fNone".encode(), digest_size=8).digest(), "little")
    assert stable_int("a", 1, None) == h and uniform01("a", 1, None) == (h >> 11) / 2 ** 53


def test_uniform_range_and_spread():
    us = [uniform01("spread", i) for i in range(4000)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert abs(sum(us) / len(us) - 0.5) < 0.02


def test_no_copy_of_the_rule_elsewhere():
    """The builder, the captioning run, the pipeline and the sampler use this module, not a hash of their own."""
    root = Path(__file__).resolve().parents[1]
    copies = [str(p.relative_to(root)) for folder in ("plugins", "shards", "launch")
              for p in (root / folder).rglob("*.py") if "blake2b(" in p.read_text() and p.name != "seeding.py"]
    assert copies == []
    assert samplers.uniform01 is seeding.uniform01 and build_plan.uniform01 is seeding.uniform01
