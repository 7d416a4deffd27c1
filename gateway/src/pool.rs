//! Per-shard reusable memory: the free list of read buffers that connections borrow only
//! while bytes are in flight, and the slab of connection slots.

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

/// A slab: values stored at small integer keys that are reused after removal, so that a
/// connection is named by a `u32` and found without hashing.
#[derive(Debug)]
pub struct Slots<T> {
    entries: Vec<Option<T>>,
    free_keys: Vec<u32>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Slots<T> {
        Slots {
            entries: Vec::new(),
            free_keys: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        if let Some(key) = self.free_keys.pop() {
            let slot = &mut self.entries[key as usize];
            assert!(slot.is_none());
            *slot = Some(value);
            return key;
        }
        let key = u32::try_from(self.entries.len()).expect("fewer than 2^32 connections");
        self.entries.push(Some(value));
        key
    }

    pub fn remove(&mut self, key: u32) -> Option<T> {
        let value = self.entries.get_mut(key as usize)?.take()?;
        self.free_keys.push(key);
        self.len -= 1;
        Some(value)
    }

    pub fn get_mut(&mut self, key: u32) -> Option<&mut T> {
        self.entries.get_mut(key as usize)?.as_mut()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().filter_map(Option::as_mut)
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

    #[test]
    fn slots_reuse_keys() {
        let mut slots = Slots::default();
        let a = slots.insert("a");
        let b = slots.insert("b");
        assert_ne!(a, b);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots.remove(a), Some("a"));
        assert_eq!(slots.remove(a), None);
        let c = slots.insert("c");
        assert_eq!(c, a);
        assert_eq!(slots.get_mut(b), Some(&mut "b"));
        assert_eq!(slots.values_mut().count(), 2);
        assert_eq!(slots.len(), 2);
    }
}
