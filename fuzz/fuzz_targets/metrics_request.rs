//! Metrics endpoint: any bytes as an HTTP request get an HTTP answer (the
//! metrics, or the status saying why not), never a panic or a hang.
#![no_main]
use std::io::{self, Cursor, Read, Write};

use libfuzzer_sys::fuzz_target;
use switchyard::control::api::StatsReply;
use switchyard::control::metrics::serve_one;
use switchyard::stats::StatsSnapshot;

struct Conn<'a> {
    input: Cursor<&'a [u8]>,
    output: Vec<u8>,
}

impl Read for Conn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Conn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut conn = Conn {
        input: Cursor::new(data),
        output: Vec::new(),
    };
    let stats = || {
        Some(StatsReply {
            stats: StatsSnapshot::default(),
            endpoints: Vec::new(),
        })
    };
    serve_one(&mut conn, &stats);
    assert!(conn.output.starts_with(b"HTTP/1.1 "));
});
