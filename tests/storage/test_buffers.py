"""The pool of reusable page-aligned buffers (storage/buffers.py)."""

from __future__ import annotations

import mmap

import pytest

from telerad.storage.buffers import BufferPool


def test_a_returned_buffer_is_lent_again_with_its_contents_untouched() -> None:
    pool = BufferPool(mmap.PAGESIZE * 2, keep=2)
    with pool.take() as first:
        first[:5] = b"hello"
    assert pool.kept == 1
    with pool.take() as again:
        assert again is first and again[:5] == b"hello" and len(again) == mmap.PAGESIZE * 2
    assert pool.kept == 1


def test_concurrent_users_get_distinct_buffers_and_at_most_keep_are_kept() -> None:
    pool = BufferPool(mmap.PAGESIZE, keep=2)
    with pool.take() as a, pool.take() as b, pool.take() as c:
        assert len({id(a), id(b), id(c)}) == 3
        a[:1], b[:1], c[:1] = b"a", b"b", b"c"
        assert (a[:1], b[:1], c[:1]) == (b"a", b"b", b"c")
    assert pool.kept == 2
    assert [x.closed for x in (a, b, c)] == [True, False, False]  # a, returned last when two were kept: let go


def test_a_buffer_is_returned_when_its_user_fails() -> None:
    pool = BufferPool(mmap.PAGESIZE, keep=1)
    with pytest.raises(RuntimeError), pool.take():
        raise RuntimeError("the write failed")
    assert pool.kept == 1


@pytest.mark.parametrize("size", [0, -4096, mmap.PAGESIZE + 1])
def test_a_size_that_is_not_whole_pages_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="multiple"):
        BufferPool(size, keep=1)


def test_lent_counts_the_buffers_in_use() -> None:
    pool = BufferPool(mmap.PAGESIZE, keep=1)
    with pool.take():
        with pool.take():
            assert pool.lent == 2
        assert pool.lent == 1
    assert pool.lent == 0 and pool.kept == 1
