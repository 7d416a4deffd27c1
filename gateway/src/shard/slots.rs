//! A slab: the shard's table of connection slots, keyed by small reused integers.

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
