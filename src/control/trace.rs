//! `switchyard trace` requests: a frame described in words, parsed at the
//! edge into a typed [`FrameSpec`] and built into bytes for the data plane to
//! explain.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use etherparse::PacketBuilder;
use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// What the traced frame carries. IP probes are IPv4 or IPv6 after their
/// destination (`udp=[fd00::1]:53`), from the endpoint's address of that
/// family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// ARP request for this address.
    Arp(Ipv4Addr),
    /// ICMP (ICMPv6) echo request to this address.
    Icmp(IpAddr),
    /// UDP datagram to this address and port.
    Udp(IpAddr, u16),
    /// TCP SYN to this address and port.
    Tcp(IpAddr, u16),
    /// An Ethernet frame with this EtherType and 46 zero bytes.
    Raw(u16),
}

/// A described frame: `in=ENDPOINT,(arp=IP|icmp=IP|udp=IP:PORT|tcp=IP:PORT|ethertype=0xNNNN)[,src=MAC][,dst=MAC]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    /// The endpoint the frame comes from.
    pub ingress: String,
    /// Source MAC (default: the endpoint's).
    pub src: Option<MacAddr>,
    /// Destination MAC (default: broadcast for ARP; for IP, the endpoint
    /// owning the address, else the gateway).
    pub dst: Option<MacAddr>,
    /// The payload.
    pub probe: Probe,
}

/// A frame description that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid frame spec {spec:?}: {why}; expected in=ENDPOINT,(arp=IP|icmp=IP|udp=IP:PORT|tcp=IP:PORT|ethertype=0xNNNN)[,src=MAC][,dst=MAC], IPv6 as udp=[IP]:PORT")]
pub struct FrameSpecError {
    /// The input.
    pub spec: String,
    /// What is wrong.
    pub why: String,
}

fn ip_port(v: &str) -> Option<(IpAddr, u16)> {
    let a: SocketAddr = v.parse().ok()?;
    Some((a.ip(), a.port()))
}

impl FromStr for FrameSpec {
    type Err = FrameSpecError;

    fn from_str(s: &str) -> Result<FrameSpec, FrameSpecError> {
        let err = |why: String| FrameSpecError {
            spec: s.to_string(),
            why,
        };
        let (mut ingress, mut src, mut dst, mut probe) = (None, None, None, None);
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{part:?} is not key=value")))?;
            let bad = || err(format!("bad value for {k}: {v:?}"));
            let new_probe = match k {
                "in" => {
                    ingress = Some(v.to_string());
                    None
                }
                "src" => {
                    src = Some(v.parse().map_err(|_| bad())?);
                    None
                }
                "dst" => {
                    dst = Some(v.parse().map_err(|_| bad())?);
                    None
                }
                "arp" => Some(Probe::Arp(v.parse().map_err(|_| bad())?)),
                "icmp" => Some(Probe::Icmp(v.parse().map_err(|_| bad())?)),
                "udp" => ip_port(v)
                    .map(|(i, p)| Probe::Udp(i, p))
                    .ok_or_else(bad)
                    .map(Some)?,
                "tcp" => ip_port(v)
                    .map(|(i, p)| Probe::Tcp(i, p))
                    .ok_or_else(bad)
                    .map(Some)?,
                "ethertype" => {
                    let hex = v.trim_start_matches("0x");
                    Some(Probe::Raw(u16::from_str_radix(hex, 16).map_err(|_| bad())?))
                }
                _ => return Err(err(format!("unknown key {k:?}"))),
            };
            if let Some(p) = new_probe {
                if probe.replace(p).is_some() {
                    return Err(err("more than one payload".into()));
                }
            }
        }
        Ok(FrameSpec {
            ingress: ingress.ok_or_else(|| err("missing in=ENDPOINT".into()))?,
            src,
            dst,
            probe: probe.ok_or_else(|| {
                err("missing payload (arp=, icmp=, udp=, tcp=, ethertype=)".into())
            })?,
        })
    }
}

impl fmt::Display for FrameSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "in={}", self.ingress)?;
        match self.probe {
            Probe::Arp(ip) => write!(f, ",arp={ip}")?,
            Probe::Icmp(ip) => write!(f, ",icmp={ip}")?,
            Probe::Udp(ip, p) => write!(f, ",udp={}", SocketAddr::new(ip, p))?,
            Probe::Tcp(ip, p) => write!(f, ",tcp={}", SocketAddr::new(ip, p))?,
            Probe::Raw(t) => write!(f, ",ethertype=0x{t:04x}")?,
        }
        if let Some(m) = self.src {
            write!(f, ",src={m}")?;
        }
        if let Some(m) = self.dst {
            write!(f, ",dst={m}")?;
        }
        Ok(())
    }
}

impl Serialize for FrameSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FrameSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FrameSpec, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Probe {
    /// The destination IP, if the probe has one.
    pub fn dst_ip(&self) -> Option<IpAddr> {
        match *self {
            Probe::Arp(ip) => Some(ip.into()),
            Probe::Icmp(ip) | Probe::Udp(ip, _) | Probe::Tcp(ip, _) => Some(ip),
            Probe::Raw(_) => None,
        }
    }
}

/// Builds the frame: from `src`/`src_ip` to `dst`. `src_ip` is of the
/// probe's family (IPv4 for ARP); a probe of the other family comes out
/// empty, which the pipeline reports as malformed.
pub fn build(probe: Probe, src: MacAddr, src_ip: IpAddr, dst: MacAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let ip = match (probe, src_ip) {
        (Probe::Arp(target), IpAddr::V4(sender)) => {
            out.extend_from_slice(&dst.0);
            out.extend_from_slice(&src.0);
            out.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
            out.extend_from_slice(&src.0);
            out.extend_from_slice(&sender.octets());
            out.extend_from_slice(&[0; 6]);
            out.extend_from_slice(&target.octets());
            return out;
        }
        (Probe::Raw(t), _) => {
            out.extend_from_slice(&dst.0);
            out.extend_from_slice(&src.0);
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&[0; 46]);
            return out;
        }
        (probe, _) => probe.dst_ip(),
    };
    let eth = PacketBuilder::ethernet2(src.0, dst.0);
    let l3 = match (src_ip, ip) {
        (IpAddr::V4(s), Some(IpAddr::V4(d))) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), Some(IpAddr::V6(d))) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => return out,
    };
    let payload = [0u8; 16];
    // Writing into a Vec cannot fail; an error would only leave it short,
    // which the pipeline then reports as malformed.
    let _ = match probe {
        Probe::Icmp(IpAddr::V4(_)) => l3.icmpv4_echo_request(1, 1).write(&mut out, &payload),
        Probe::Icmp(IpAddr::V6(_)) => l3.icmpv6_echo_request(1, 1).write(&mut out, &payload),
        Probe::Udp(_, port) => l3.udp(40000, port).write(&mut out, &payload),
        Probe::Tcp(_, port) => l3.tcp(40000, port, 1, 65535).syn().write(&mut out, &[]),
        Probe::Arp(_) | Probe::Raw(_) => Ok(()),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_rejects() {
        let s: FrameSpec = "in=a,icmp=10.0.0.1,dst=02:00:00:00:00:09".parse().unwrap();
        assert_eq!(s.probe, Probe::Icmp(Ipv4Addr::new(10, 0, 0, 1).into()));
        assert_eq!(s.to_string(), "in=a,icmp=10.0.0.1,dst=02:00:00:00:00:09");
        assert_eq!(s.to_string().parse::<FrameSpec>().unwrap(), s);
        for bad in [
            "icmp=10.0.0.1",
            "in=a",
            "in=a,icmp=1.2.3",
            "in=a,udp=1.2.3.4",
            "in=a,udp=fd00::1:53",
            "in=a,arp=fd00::1",
            "in=a,arp=1.1.1.1,icmp=1.1.1.1",
            "in=a,foo=1",
            "in=a,ethertype=xyz",
        ] {
            assert!(bad.parse::<FrameSpec>().is_err(), "{bad}");
        }
        let f = build(
            s.probe,
            MacAddr([2; 6]),
            Ipv4Addr::new(10, 0, 0, 2).into(),
            MacAddr([4; 6]),
        );
        assert!(etherparse::SlicedPacket::from_ethernet(&f).is_ok());
    }

    #[test]
    fn ipv6_probes_parse_print_and_build() {
        let gw: IpAddr = "fd00::1".parse().unwrap();
        for (spec, probe) in [
            ("in=a,icmp=fd00::1", Probe::Icmp(gw)),
            ("in=a,udp=[fd00::1]:53", Probe::Udp(gw, 53)),
            ("in=a,tcp=[fd00::1]:443", Probe::Tcp(gw, 443)),
        ] {
            let s: FrameSpec = spec.parse().unwrap();
            assert_eq!(s.probe, probe, "{spec}");
            assert_eq!(s.to_string(), spec);
            let f = build(
                probe,
                MacAddr([2; 6]),
                "fd00::2".parse().unwrap(),
                MacAddr([4; 6]),
            );
            let p = etherparse::SlicedPacket::from_ethernet(&f).expect(spec);
            assert!(
                matches!(p.net, Some(etherparse::NetSlice::Ipv6(_))),
                "{spec}"
            );
            assert!(p.transport.is_some(), "{spec}");
        }
        // An IPv4 source for an IPv6 probe builds nothing.
        let f = build(
            Probe::Icmp(gw),
            MacAddr([2; 6]),
            Ipv4Addr::LOCALHOST.into(),
            MacAddr([4; 6]),
        );
        assert!(f.is_empty());
    }
}
