//! TEMP STUB (replaced by wire branch)
use super::{MacAddr, Result, Error};
pub const HEADER_LEN: usize = 14;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType { Unknown(u16) }
impl From<EtherType> for u16 { fn from(e: EtherType) -> u16 { match e { EtherType::Unknown(v) => v } } }
pub struct L2Header { pub dst: MacAddr, pub src: MacAddr, pub ethertype: EtherType, pub vlan: Option<u16>, pub l3_offset: u16 }
pub fn parse_l2(b: &[u8]) -> Result<L2Header> {
    if b.len() < 14 { return Err(Error::Truncated); }
    Ok(L2Header { dst: MacAddr::from_bytes(&b[0..6]), src: MacAddr::from_bytes(&b[6..12]), ethertype: EtherType::Unknown(u16::from_be_bytes([b[12], b[13]])), vlan: None, l3_offset: 14 })
}
