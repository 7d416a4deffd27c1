//! A shard's free list of read buffers, which connections borrow only while bytes are in
//! flight.

use std::cell::RefCell;

use bytes::BytesMut;

/// A shard's free list of read buffers. A connection takes one when its socket is readable
/// and gives it back as soon as it holds no partial frame, so idle connections hold none.
#[derive(Debug)]
pub struct BufferPool {
    free: RefCell<Vec<BytesMut>>,
    buffer_bytes: usize,
    pooled_max: usize,
}

impl BufferPool {
    pub fn new(buffer_bytes: usize, pooled_max: usize) -> BufferPool {
        assert!(buffer_bytes > 0);
        BufferPool {
            free: RefCell::new(Vec::with_capacity(pooled_max)),
            buffer_bytes,
            pooled_max,
        }
    }

    /// Bytes of one pooled buffer, which is also the most one read asks the kernel for.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// An empty buffer with at least `buffer_bytes` of capacity.
    pub fn take(&self) -> BytesMut {
        let buffer = self
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.buffer_bytes));
        assert!(buffer.is_empty());
        buffer
    }

    /// Gives an empty buffer back. One whose memory is still shared with payloads handed on
    /// (or that grew for a large message) cannot be reclaimed whole and is dropped instead.
    pub fn give(&self, mut buffer: BytesMut) {
        assert!(buffer.is_empty(), "a buffer goes back to the pool empty");
        let mut free = self.free.borrow_mut();
        if free.len() >= self.pooled_max || buffer.capacity() > 4 * self.buffer_bytes {
            return;
        }
        if buffer.try_reclaim(self.buffer_bytes) {
            free.push(buffer);
        }
    }

    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_only_when_reclaimable() {
        let pool = BufferPool::new(1024, 2);
        let mut buffer = pool.take();
        assert!(buffer.capacity() >= 1024);
        buffer.extend_from_slice(b"hello");
        let payload = buffer.split_to(5).freeze();
        pool.give(buffer);
        // The payload still shares the memory, so the tail cannot be reclaimed.
        assert_eq!(pool.pooled(), 0);
        drop(payload);

        pool.give(pool.take());
        pool.give(BytesMut::with_capacity(1024));
        pool.give(BytesMut::with_capacity(1024));
        assert_eq!(pool.pooled(), 2, "the pool keeps at most pooled_max");
        pool.take();
        pool.give(BytesMut::with_capacity(64 * 1024));
        assert_eq!(pool.pooled(), 1, "a grown buffer is dropped");
    }
}
