//! VXLAN headers (RFC 7348): the 8-byte [`Packet`] view and [`VxlanRepr`].

use super::{Error, Result};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// IANA-assigned UDP port.
pub const DEFAULT_PORT: u16 = 4789;
/// The I flag: the VNI is valid. Must be set.
pub const FLAG_I: u8 = 0x08;

/// Byte ranges of the header fields.
pub mod field {
    /// A byte range inside a header.
    pub type Field = core::ops::Range<usize>;
    /// Flags (only I = 0x08 defined).
    pub const FLAGS: usize = 0;
    /// Reserved, must be zero.
    pub const RESERVED1: Field = 1..4;
    /// VXLAN network identifier.
    pub const VNI: Field = 4..7;
    /// Reserved, must be zero.
    pub const RESERVED2: usize = 7;
}

/// Zero-copy view of a VXLAN header followed by the inner Ethernet frame.
///
/// After [`Packet::check_len`] succeeded (buffer >= 8 bytes) no accessor panics.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking anything.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer and calls [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the 8-byte header is present.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// True when the reserved fields (the 24 bits after the flags and the
    /// last byte) are zero. Flag bits other than I are not inspected
    /// (extensions such as VXLAN-GBP use them).
    pub fn reserved_ok(&self) -> bool {
        let b = self.buffer.as_ref();
        b[field::RESERVED1] == [0, 0, 0] && b[field::RESERVED2] == 0
    }

    /// The VNI if the I flag is set and reserved bits are zero, else `Malformed`.
    pub fn validate(&self) -> Result<u32> {
        self.check_len()?;
        if self.flags() & FLAG_I == 0 || !self.reserved_ok() {
            return Err(Error::Malformed);
        }
        Ok(self.vni())
    }

    /// The inner frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the 24-bit VNI (upper bits are ignored).
    pub fn set_vni(&mut self, vni: u32) {
        let b = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// Zeroes all reserved fields.
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[field::RESERVED1].fill(0);
        b[field::RESERVED2] = 0;
    }

    /// Mutable inner frame.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// High-level VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
}

impl VxlanRepr {
    /// Parses and validates a header.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<VxlanRepr> {
        Ok(VxlanRepr { vni: p.validate()? })
    }

    /// Header length (8).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; `Malformed` if the VNI needs more than 24 bits.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        if self.vni > 0x00ff_ffff {
            return Err(Error::Malformed);
        }
        let b = buf.get_mut(..HEADER_LEN).ok_or(Error::BufferTooSmall)?;
        let mut p = Packet::new_unchecked(b);
        p.set_flags(FLAG_I);
        p.clear_reserved();
        p.set_vni(self.vni);
        Ok(HEADER_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validate_rejects_bad_headers() {
        let mut b = [0x08, 0, 0, 0, 0, 0, 42, 0];
        assert_eq!(Packet::new_checked(&b[..]).unwrap().validate(), Ok(42));
        b[0] = 0;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap().validate(),
            Err(Error::Malformed)
        );
        b[0] = 0x08;
        b[7] = 1;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap().validate(),
            Err(Error::Malformed)
        );
        b[7] = 0;
        b[2] = 1;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap().validate(),
            Err(Error::Malformed)
        );
        b[2] = 0;
        b[0] = 0x88; // other flag bits are ignored
        assert_eq!(Packet::new_checked(&b[..]).unwrap().validate(), Ok(42));
        assert_eq!(Packet::new_checked(&b[..7]).err(), Some(Error::Truncated));
        assert_eq!(
            VxlanRepr { vni: 1 << 24 }.emit(&mut b),
            Err(Error::Malformed)
        );
    }

    proptest! {
        #[test]
        fn repr_round_trip(vni in 0u32..0x100_0000) {
            let mut b = [0xffu8; 8];
            VxlanRepr { vni }.emit(&mut b).unwrap();
            prop_assert_eq!(VxlanRepr::parse(&Packet::new_checked(&b[..]).unwrap()), Ok(VxlanRepr { vni }));
        }

        #[test]
        fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..16)) {
            let p = Packet::new_unchecked(&b[..]);
            let _ = p.validate();
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = (p.flags(), p.vni(), p.reserved_ok(), p.payload().len(), VxlanRepr::parse(&p));
            }
        }
    }
}
