//! Text specs users type: publications (`-p`), frame specs (`trace`),
//! subnets, MAC addresses and fault plans. Any string is parsed without a
//! panic, and what parses prints back to a string that parses to the same.
#![no_main]
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use switchyard::control::model::Publication;
use switchyard::control::net::{Ipv4Net, Ipv6Net};
use switchyard::control::trace::FrameSpec;
use switchyard::ports::fault::FaultPlan;
use switchyard::wire::MacAddr;

fn round_trip<T>(s: &str)
where
    T: FromStr + ToString + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = s.parse::<T>() {
        let again = v.to_string().parse::<T>().ok();
        assert_eq!(again.as_ref(), Some(&v), "{s:?} printed as {:?}", v.to_string());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    round_trip::<Publication>(s);
    round_trip::<FrameSpec>(s);
    round_trip::<Ipv4Net>(s);
    round_trip::<Ipv6Net>(s);
    round_trip::<MacAddr>(s);
    let _ = s.parse::<FaultPlan>();
});
