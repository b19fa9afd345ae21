import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsim_stream.ray_actors import CHUNK_BYTES, chunked, joined


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 20_000), st.sampled_from([1, 8, 64, 300]))
def test_row_chunks_stay_under_rays_threaded_copy_size_and_join_back(rows, dim):
    table = np.arange(rows * dim, dtype=np.float32).reshape(rows, dim)
    chunks = chunked(table)
    assert all(c.nbytes <= CHUNK_BYTES or len(c) == 1 for c in chunks)
    assert all(np.shares_memory(c, table) or not c.size for c in chunks)  # views: nothing copied
    np.testing.assert_array_equal(joined(chunks), table)
