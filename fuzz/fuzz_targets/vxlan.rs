//! VXLAN header view, validation and repr.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard::wire::vxlan;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = vxlan::Packet::new_checked(data) {
        let _ = (p.flags(), p.vni(), p.reserved_ok(), p.payload());
        if let Ok(r) = vxlan::VxlanRepr::parse(&p) {
            let mut b = [0u8; 8];
            r.emit(&mut b).expect("valid vni emits");
            assert_eq!(&b[1..], &data[1..8]);
        }
    }
});
