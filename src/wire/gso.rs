//! TEMP STUB
use super::{Result, Error};
use super::virtio_net::VirtioNetHdr;
pub struct Segmenter<'a> { _f: &'a [u8] }
impl<'a> Segmenter<'a> {
    pub fn new(f: &'a [u8], _h: &VirtioNetHdr, _m: Option<u16>) -> Result<Self> { let _ = f; Err(Error::Unsupported) }
    pub fn next_into(&mut self, _o: &mut [u8]) -> Option<Result<usize>> { None }
}
pub fn complete_checksum(_f: &mut [u8], _h: &VirtioNetHdr) -> Result<()> { Err(Error::Unsupported) }
