//! TEMP STUB
use super::{MacAddr, Result, Error};
pub fn make_echo_reply_in_place(_f: &mut [u8], _l3: usize, _m: MacAddr) -> Result<()> { Err(Error::Unsupported) }
