"""Content features (hashing, tokens, bags, the text cache) and the content/learned blend."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from recsim_stream.config import ConfigError, ContentConfig
from recsim_stream.content_features import (
    MISSING,
    Bags,
    FeatureExtractor,
    FeatureSketch,
    HashedTextEncoder,
    LruCache,
    attribute_tokens,
    bucket,
    category_tokens,
    item_attributes,
    learned_weight,
    price_features,
    stable_hash,
    steps_tokens,
    text_tokens,
    title_words,
)
from recsim_stream.events import ItemMeta


class CountingEncoder:
    """A deterministic stand-in sentence encoder that records what it was asked to encode."""

    dim = 2

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)


def test_stable_hash_is_pinned_to_a_literal_value():
    assert stable_hash("text", "w:phone") == 18301676551278525805


def test_hashed_bag_is_the_same_in_another_process_with_another_hash_seed():
    code = "from recsim_stream.content_features import HashedTextEncoder; print(HashedTextEncoder(2048).bag('Red phone')[0].tolist())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(HashedTextEncoder(2048).bag("Red phone")[0].tolist())


def test_hashed_bag_of_a_text_is_pinned():
    ids, weights = HashedTextEncoder(2048).bag("Red phone")
    assert ids.tolist() == [105, 131, 309, 400, 515, 856, 1389, 1474, 1557, 1714]
    assert np.allclose(weights, 1 / math.sqrt(10))


def test_hashed_bag_weights_count_repeated_tokens():
    ids, weights = HashedTextEncoder(1 << 20).bag("go go")  # w:go, c:<go, c:go> each twice
    assert len(ids) == 3
    assert np.allclose(weights, 1 / math.sqrt(3))


def test_text_tokens_are_words_and_edged_character_trigrams():
    assert text_tokens("TV") == ["w:tv", "c:<tv", "c:tv>"]


def test_text_tokens_of_an_empty_title_are_empty():
    assert text_tokens(" - ") == []


def test_category_tokens_are_the_prefixes_of_a_dotted_path():
    assert category_tokens("electronics.smartphone") == ["electronics", "electronics.smartphone"]


def test_category_tokens_split_movielens_genres():
    assert category_tokens("Action|Comedy") == ["action", "comedy"]


def test_category_tokens_of_no_category_is_the_missing_token():
    assert category_tokens("") == [MISSING]


def test_attribute_tokens_are_key_value_pairs_in_key_order():
    assert attribute_tokens({"size": "XL", "Brand": " Apple"}) == ["brand=apple", "size=xl"]


def test_a_numeric_year_attribute_gives_tokens_at_several_resolutions():
    assert attribute_tokens({"year": "1995"}) == [
        "year/1=1995",
        "year/2=997",
        "year/5=399",
        "year/10=199",
        "year/20=99",
    ]


def test_a_year_that_is_not_a_number_stays_a_key_value_token():
    assert attribute_tokens({"year": "n/a"}) == ["year=n/a"]


def test_steps_tokens_floor_the_value_at_each_step():
    assert steps_tokens("price", 4.6, (0.5, 2.0)) == ["price/0.5=9", "price/2=2"]


def test_item_attributes_read_the_year_at_the_end_of_a_title():
    assert item_attributes(ItemMeta("1", "Toy Story (1995)", "Animation")) == {"year": "1995"}


def test_item_attributes_keep_a_given_year_over_the_title():
    item = ItemMeta("1", "Toy Story (1995)", attributes={"year": "1996", "brand": "pixar"})
    assert item_attributes(item) == {"year": "1996", "brand": "pixar"}


def test_item_attributes_find_no_year_in_a_title_without_one():
    assert item_attributes(ItemMeta("1", "Apple iPhone 2019 edition")) == {}


def test_title_words_are_the_word_tokens_only():
    assert title_words("Red TV") == ["w:red", "w:tv"]


def _sketch(*items: ItemMeta) -> np.ndarray:
    return FeatureSketch(64).encode(list(items), np.zeros((len(items), 4), dtype=bool))


def test_a_sketch_row_is_a_unit_vector():
    row = _sketch(ItemMeta("a", "Heat (1995)", "Action|Crime"))[0]
    assert float(np.linalg.norm(row)) == pytest.approx(1.0)


def test_an_item_without_metadata_has_a_zero_sketch():
    assert _sketch(ItemMeta("a")).tolist() == [[0.0] * 64]


def test_items_with_the_same_metadata_have_the_same_sketch():
    first, second = _sketch(ItemMeta("a", "Heat (1995)", "Action"), ItemMeta("b", "Heat (1995)", "Action"))
    assert first.tolist() == second.tolist()


def test_the_sketch_puts_a_nearby_year_closer_than_a_distant_one():
    base, near, far = _sketch(
        ItemMeta("a", "x (1995)", "Drama"),
        ItemMeta("b", "y (1994)", "Drama"),
        ItemMeta("c", "z (1935)", "Drama"),
    )
    assert float(base @ near) > float(base @ far)


def test_the_sketch_puts_a_close_price_closer_than_a_distant_one():
    base, near, far = _sketch(
        ItemMeta("a", "", "phone", 100.0),
        ItemMeta("b", "", "phone", 110.0),
        ItemMeta("c", "", "phone", 900.0),
    )
    assert float(base @ near) > float(base @ far)


def test_a_hidden_field_is_left_out_of_the_sketch():
    item = ItemMeta("a", "red phone", "electronics.smartphone", 99.0)
    hidden = FeatureSketch(64).encode([item], np.array([[True, False, False, False]]))
    assert hidden.tolist() == _sketch(ItemMeta("a", "", "electronics.smartphone", 99.0)).tolist()


def test_a_sketch_row_is_pinned():
    # The per-item implementation before the batch one gave these values (repeated word, title year,
    # attribute, price): the batch encoding must not move an item that was already encoded.
    item = ItemMeta("a", "Red phone red (2019)", "electronics.smartphone", 99.0, {"brand": "Acme"})
    expected = [0.557945, 0.072397, 0.0, 0.0, -0.394527, 0.0, 0.0, 0.0, -0.394527, -0.32213, 0.0, 0.235815]
    expected += [0.32213, 0.0, 0.32213, 0.072397]
    row = FeatureSketch(16).encode([item], np.zeros((1, 4), dtype=bool))[0]
    assert np.allclose(row, expected, atol=1e-6)


def test_a_batch_sketch_equals_the_items_sketched_one_by_one():
    items = [
        ItemMeta("a", "red phone", "electronics.smartphone", 99.0, {"brand": "acme"}),
        ItemMeta("b", "red phone", "electronics.smartphone", 12.5),
        ItemMeta("c", "Heat (1995)", "Action|Crime"),
        ItemMeta("d"),
        ItemMeta("e", "red phone", "", 99.0, {"brand": "acme"}),
    ]
    hidden = np.array(
        [[False] * 4, [False, True, False, False], [False] * 4, [False] * 4, [True, False, True, True]]
    )
    one_by_one = np.vstack(
        [FeatureSketch(64).encode([item], hidden[i : i + 1]) for i, item in enumerate(items)]
    )
    assert np.allclose(FeatureSketch(64).encode(items, hidden), one_by_one, atol=1e-7)


@pytest.mark.parametrize("price", [None, float("nan"), float("inf"), -1.0])
def test_a_price_that_is_missing_or_invalid_adds_nothing_to_the_sketch(price):
    assert (
        _sketch(ItemMeta("a", "red phone", "", price)).tolist()
        == _sketch(ItemMeta("a", "red phone")).tolist()
    )


def test_an_empty_batch_has_an_empty_sketch():
    assert FeatureSketch(8).encode([], np.zeros((0, 4), dtype=bool)).shape == (0, 8)


def test_extract_gives_a_sketch_of_the_asked_width():
    features = FeatureExtractor(ContentConfig(), sketch_dim=16).extract([ItemMeta("a", "red phone")])
    assert features.sketch.shape == (1, 16)


def test_extract_without_a_sketch_gives_an_empty_one():
    assert FeatureExtractor(ContentConfig()).extract([ItemMeta("a", "red phone")]).sketch.shape == (1, 0)


def test_price_features_are_log1p_and_a_missing_flag():
    assert price_features(99.0) == (math.log1p(99.0), 0.0)
    assert price_features(None) == (0.0, 1.0)


def test_bags_concat_gives_embedding_bag_offsets():
    bags = Bags.concat([(np.array([3, 4]), np.array([0.5, 0.5])), (np.array([7]), np.array([1.0]))])
    assert bags.ids.tolist() == [3, 4, 7]
    assert bags.offsets.tolist() == [0, 2]
    assert bags.weights.dtype == np.float32


def test_extract_builds_one_bag_per_item_and_price_rows():
    extractor = FeatureExtractor(ContentConfig())
    items = [
        ItemMeta("a", "red phone", "electronics.smartphone", 99.0, {"brand": "x"}),
        ItemMeta("b"),
    ]
    features = extractor.extract(items)
    assert len(features) == 2
    assert features.categories.offsets.tolist() == [0, 2]
    assert features.attributes.offsets.tolist() == [0, 1]
    assert features.price.tolist() == [[pytest.approx(math.log1p(99.0)), 0.0], [0.0, 1.0]]


def test_a_hidden_field_reads_as_that_field_arriving_empty():
    extractor = FeatureExtractor(ContentConfig())
    item = ItemMeta("a", "red phone", "electronics.smartphone", 99.0, {"brand": "x"})
    hidden = extractor.extract([item], hidden=np.array([[True, True, True, True]]))
    empty = extractor.extract([ItemMeta("a")])
    for field in ("categories", "attributes"):
        assert getattr(hidden, field).ids.tolist() == getattr(empty, field).ids.tolist()
    assert hidden.text.ids.tolist() == empty.text.ids.tolist()
    assert hidden.price.tolist() == empty.price.tolist()


def test_extract_reads_each_items_attributes_as_item_attributes_and_sketches_as_feature_sketch():
    """The attribute keys are read once per batch (cached by title when an item has no attributes of
    its own) for the bags and the sketch alike: the same features as reading them per field."""
    items = [
        ItemMeta("a", "Heat (1995)", "Action|Crime"),
        ItemMeta("b", "Heat (1995)", "Action", 9.0, {"year": "1996", "brand": "x"}),
        ItemMeta("c", "Heat (1995)"),
        ItemMeta("d", "red phone", "electronics.smartphone", 99.0, {"brand": "x"}),
        ItemMeta("e", "Casino (1995)", "Crime"),
    ]
    hidden = np.array([[False] * 4, [False] * 4, [False, False, True, False], [True] * 4, [False] * 4])
    features = FeatureExtractor(ContentConfig(), sketch_dim=32).extract(items, hidden=hidden)
    buckets = ContentConfig().attribute_buckets
    expected = [
        sorted(bucket("attr", t, buckets) for t in attribute_tokens({} if h[2] else item_attributes(item)))
        for item, h in zip(items, hidden, strict=True)
    ]
    bags = features.attributes
    ends = [*bags.offsets.tolist()[1:], len(bags.ids)]
    found = [sorted(bags.ids[a:b].tolist()) for a, b in zip(bags.offsets.tolist(), ends, strict=True)]
    assert found == expected
    assert found[0] != found[1]  # a given year is not the title's
    assert np.array_equal(features.sketch, FeatureSketch(32).encode(items, hidden))


def test_dense_text_encodes_each_distinct_title_once():
    encoder = CountingEncoder()
    extractor = FeatureExtractor(ContentConfig(encoder="minilm"), encoder)
    first = extractor.extract([ItemMeta("a", "banana"), ItemMeta("b", "kiwi"), ItemMeta("c", "banana")])
    extractor.extract([ItemMeta("d", "kiwi"), ItemMeta("e", "apple")])
    assert encoder.calls == [["banana", "kiwi"], ["apple"]]
    assert first.text.tolist() == [[6.0, 3.0], [4.0, 0.0], [6.0, 3.0]]


def test_minilm_extractor_without_an_encoder_is_refused():
    with pytest.raises(ValueError, match="no sentence encoder"):
        FeatureExtractor(ContentConfig(encoder="minilm"))


def test_lru_cache_forgets_the_least_recently_used_entry():
    cache = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_content_config_refuses_a_dropout_of_one():
    with pytest.raises(ConfigError, match="content.field_dropout"):
        ContentConfig(field_dropout=1.0)


def test_learned_weight_is_half_at_the_half_life():
    assert learned_weight(10, half_life=10.0) == 0.5


def test_a_negative_sketch_weight_is_refused():
    with pytest.raises(ConfigError, match="content.sketch_weight"):
        ContentConfig(sketch_weight=-1.0)
