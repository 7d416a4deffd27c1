//! The little-endian field writer and reader that log records are encoded with.

use wire::UserId;

use super::DecodeError;

pub(super) struct Writer<'a> {
    pub(super) out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    pub(super) fn u8(&mut self, value: u8) {
        self.out.push(value);
    }

    pub(super) fn u32(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    pub(super) fn u64(&mut self, value: u64) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    pub(super) fn user(&mut self, user: &UserId) {
        let bytes = user.as_str().as_bytes();
        self.u8(u8::try_from(bytes.len()).expect("a user id is at most 64 bytes"));
        self.out.extend_from_slice(bytes);
    }

    pub(super) fn text(&mut self, text: &str) {
        self.u32(u32::try_from(text.len()).expect("text fits a record"));
        self.out.extend_from_slice(text.as_bytes());
    }
}

pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError("the payload ends inside a field"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub(super) fn user(&mut self) -> Result<UserId, DecodeError> {
        let len = self.u8()? as usize;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError("user id is not UTF-8"))?;
        UserId::parse(text).map_err(|_| DecodeError("invalid user id"))
    }

    pub(super) fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("text is not UTF-8"))
    }
}
