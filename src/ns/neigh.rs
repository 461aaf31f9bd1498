//! The host's IPv4 neighbour (ARP) table, as far as sandboxes are concerned.
//!
//! Linux keeps ONE ARP table for all network namespaces: its size limit
//! `net.ipv4.neigh.default.gc_thresh3` (1024 by default) counts the entries
//! of every namespace on the host together. Each sandbox holds one entry per
//! peer it talks to (and per peer that resolved it) plus one for the gateway,
//! so a network of `n` endpoints talking all-to-all needs up to `n * n`
//! entries. Past the limit the kernel cannot create an entry ("neighbour:
//! arp_cache: neighbor table overflow!"): `sendmsg` in the sandbox fails with
//! `ENOBUFS` before any frame reaches the TAP, so the switch sees nothing,
//! forwards nothing and drops nothing, until the kernel's garbage collector
//! frees entries older than a few seconds. The switch cannot fix that (the
//! limit is host-wide and only root in the initial namespace may raise it);
//! it warns when its endpoints may need more than the limit and reports the
//! kernel's `table_fulls` counter in `stats` (`host-arp-table-full`).

use std::sync::atomic::{AtomicU64, Ordering};

/// The host-wide ARP table limit.
pub const GC_THRESH3: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";
/// The ARP table's statistics (one row per CPU, hexadecimal).
pub const ARP_STAT: &str = "/proc/net/stat/arp_cache";

/// Entries the sandboxes of networks with `sizes` endpoints each may need in
/// the host's ARP table when every endpoint talks to every other endpoint of
/// its network and to its gateway: `n - 1` peers plus the gateway, each.
pub fn entries_needed(sizes: impl IntoIterator<Item = usize>) -> u64 {
    sizes.into_iter().map(|n| (n as u64) * (n as u64)).sum()
}

/// The warning for `needed` entries against the host's `limit`, if they do
/// not fit.
pub fn advice(needed: u64, limit: u64) -> Option<String> {
    if needed <= limit {
        return None;
    }
    let suggest = needed.next_power_of_two().max(limit * 2);
    Some(format!(
        "the endpoints attached may need up to {needed} IPv4 neighbour (ARP) entries but the \
         host's ARP table, shared by every network namespace, holds {limit} \
         (net.ipv4.neigh.default.gc_thresh3); past it, sends in the sandboxes fail with \
         \"No buffer space available\" and nothing reaches the switch (see `stats`: \
         host-arp-table-full, and dmesg: \"neighbor table overflow\"). As root on the host: \
         sysctl -w net.ipv4.neigh.default.gc_thresh3={suggest} \
         net.ipv4.neigh.default.gc_thresh2={} net.ipv4.neigh.default.gc_thresh1={}",
        suggest / 2,
        suggest / 8
    ))
}

/// Reads the host's ARP table limit (`None` where the sysctl is not visible,
/// e.g. in a network namespace owned by an unprivileged user namespace).
pub fn read_limit() -> Option<u64> {
    std::fs::read_to_string(GC_THRESH3)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Times the kernel could not add an entry because the table was full,
/// summed over CPUs, from the text of `/proc/net/stat/arp_cache`.
pub fn parse_table_fulls(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    let col = lines
        .next()?
        .split_whitespace()
        .position(|h| h == "table_fulls")?;
    let mut sum = 0u64;
    for line in lines {
        let field = line.split_whitespace().nth(col)?;
        sum = sum.saturating_add(u64::from_str_radix(field, 16).ok()?);
    }
    Some(sum)
}

/// [`parse_table_fulls`] of the host's table.
pub fn read_table_fulls() -> Option<u64> {
    parse_table_fulls(&std::fs::read_to_string(ARP_STAT).ok()?)
}

/// Largest need already warned about (so the log says it once per growth
/// past the limit, not once per endpoint).
static WARNED: AtomicU64 = AtomicU64::new(0);

/// Logs [`advice`] when endpoints in networks of `sizes` may not fit in the
/// host's ARP table and no warning was given for this many entries or more.
pub fn warn_if_short(sizes: impl IntoIterator<Item = usize>) {
    let needed = entries_needed(sizes);
    let Some(limit) = read_limit() else { return };
    if let Some(msg) = should_warn(needed, limit, &WARNED) {
        tracing::warn!("{msg}");
    }
}

/// The warning to log now, if any: only when it does not fit and the need
/// has at least doubled since the last warning (or none was given).
fn should_warn(needed: u64, limit: u64, warned: &AtomicU64) -> Option<String> {
    let msg = advice(needed, limit)?;
    let last = warned.load(Ordering::Relaxed);
    if last != 0 && needed < last.saturating_mul(2) {
        return None;
    }
    warned.store(needed, Ordering::Relaxed);
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_to_all_needs_a_peer_entry_each_and_the_gateway() {
        assert_eq!(entries_needed([]), 0);
        assert_eq!(entries_needed([1]), 1);
        // 100 endpoints on one network: 99 peers + gateway each.
        assert_eq!(entries_needed([100]), 10_000);
        assert_eq!(entries_needed([30, 3]), 909);
        // The default limit holds 32 endpoints all-to-all, not 33.
        assert!(advice(entries_needed([32]), 1024).is_none());
        let msg = advice(entries_needed([33]), 1024).expect("too many");
        assert!(msg.contains("1089"), "{msg}");
        assert!(msg.contains("gc_thresh3=2048"), "{msg}");
        assert!(msg.contains("No buffer space available"), "{msg}");
        assert!(advice(entries_needed([100]), 1024)
            .expect("too many")
            .contains("gc_thresh3=16384"));
    }

    #[test]
    fn warns_once_per_doubling() {
        let w = AtomicU64::new(0);
        assert!(should_warn(900, 1024, &w).is_none());
        assert!(should_warn(1089, 1024, &w).is_some());
        assert!(should_warn(1156, 1024, &w).is_none());
        assert!(should_warn(2178, 1024, &w).is_some());
        assert!(should_warn(2200, 1024, &w).is_none());
    }

    #[test]
    fn table_fulls_are_summed_over_cpus() {
        let text = "entries  allocs   destroys hash_grows lookups  hits     res_failed \
                    rcv_probes_mcast rcv_probes_ucast periodic_gc_runs forced_gc_runs \
                    unresolved_discards table_fulls\n\
                    000003da 0000286e 00002588 00000004   0007f40b 000124ee 00000028   \
                    00000000 00000000 00000000 00000ab6 00000000 00000a4e\n\
                    000003da 0000280c 00002718 00000004   00073708 00011805 00000024   \
                    00000000 00000000 000005c5 00000b20 00000000 00000aa0\n";
        assert_eq!(parse_table_fulls(text), Some(0xa4e + 0xaa0));
        assert_eq!(parse_table_fulls("entries allocs\n1 2\n"), None);
        assert_eq!(parse_table_fulls(""), None);
        assert_eq!(
            parse_table_fulls("table_fulls\nzz\n"),
            None,
            "not hexadecimal"
        );
    }
}
